//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`, which share a wire format),
//! answered from the descriptors build.rs compiled into the binary.

use std::collections::HashMap;
use std::sync::OnceLock;

use bytes::Bytes;
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet};

use crate::proto::grpc::reflection::v1::{
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    ErrorResponse, FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest,
    ServerReflectionResponse, ServiceResponse,
};

/// What reflection knows: every file (encoded), which file defines each symbol, the services.
struct Index {
    files: HashMap<String, (Bytes, Vec<String>)>,
    symbols: HashMap<String, String>,
    services: Vec<String>,
}

fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let set = FileDescriptorSet::decode(crate::proto::DESCRIPTORS)
            .expect("build.rs wrote a valid descriptor set");
        let mut index = Index {
            files: HashMap::new(),
            symbols: HashMap::new(),
            services: Vec::new(),
        };
        for file in set.file {
            let name = file.name().to_owned();
            let package = file.package().to_owned();
            let qualify = |n: &str| {
                if package.is_empty() {
                    n.to_owned()
                } else {
                    format!("{package}.{n}")
                }
            };
            let mut symbols = Vec::new();
            for service in &file.service {
                let full = qualify(service.name());
                index.services.push(full.clone());
                for method in &service.method {
                    symbols.push(format!("{full}.{}", method.name()));
                }
                symbols.push(full);
            }
            for e in &file.enum_type {
                symbols.push(qualify(e.name()));
            }
            for m in &file.message_type {
                message_symbols(&qualify(m.name()), m, &mut symbols);
            }
            for s in symbols {
                index.symbols.insert(s, name.clone());
            }
            let encoded = Bytes::from(file.encode_to_vec());
            index.files.insert(name, (encoded, file.dependency.clone()));
        }
        index.services.sort();
        index
    })
}

fn message_symbols(full: &str, m: &DescriptorProto, out: &mut Vec<String>) {
    out.push(full.to_owned());
    for nested in &m.nested_type {
        message_symbols(&format!("{full}.{}", nested.name()), nested, out);
    }
    for e in &m.enum_type {
        out.push(format!("{full}.{}", e.name()));
    }
}

/// A file and everything it imports, each once, the file first.
fn with_dependencies(name: &str) -> Option<Vec<Bytes>> {
    let index = index();
    let mut out = Vec::new();
    let mut seen = Vec::new();
    let mut todo = vec![name.to_owned()];
    while let Some(file) = todo.pop() {
        if seen.contains(&file) {
            continue;
        }
        let (bytes, deps) = index.files.get(&file)?;
        out.push(bytes.clone());
        todo.extend(deps.iter().cloned());
        seen.push(file);
    }
    Some(out)
}

/// Answers one reflection request.
pub fn answer(request: ServerReflectionRequest) -> ServerReflectionResponse {
    let not_found = |what: String| {
        MessageResponse::ErrorResponse(ErrorResponse {
            error_code: 5, // NOT_FOUND
            error_message: what,
        })
    };
    let files = |found: Option<Vec<Bytes>>, what: String| match found {
        Some(file_descriptor_proto) => {
            MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                file_descriptor_proto,
            })
        }
        None => not_found(what),
    };
    let response = match &request.message_request {
        Some(MessageRequest::ListServices(_)) => {
            MessageResponse::ListServicesResponse(ListServiceResponse {
                service: index()
                    .services
                    .iter()
                    .map(|name| ServiceResponse { name: name.clone() })
                    .collect(),
            })
        }
        Some(MessageRequest::FileByFilename(name)) => {
            files(with_dependencies(name), format!("no file {name:?}"))
        }
        Some(MessageRequest::FileContainingSymbol(symbol)) => {
            let file = index().symbols.get(symbol.trim_start_matches('.'));
            files(
                file.and_then(|f| with_dependencies(f)),
                format!("no symbol {symbol:?}"),
            )
        }
        Some(MessageRequest::FileContainingExtension(_))
        | Some(MessageRequest::AllExtensionNumbersOfType(_)) => {
            not_found("this server defines no extensions".into())
        }
        None => MessageResponse::ErrorResponse(ErrorResponse {
            error_code: 3, // INVALID_ARGUMENT
            error_message: "empty reflection request".into(),
        }),
    };
    ServerReflectionResponse {
        valid_host: request.host.clone(),
        original_request: Some(request),
        message_response: Some(response),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(m: MessageRequest) -> MessageResponse {
        answer(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(m),
        })
        .message_response
        .unwrap()
    }

    #[test]
    fn lists_every_served_service() {
        let MessageResponse::ListServicesResponse(list) =
            ask(MessageRequest::ListServices(String::new()))
        else {
            panic!()
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            vec![
                "eventstream.EventService",
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
        );
    }

    #[test]
    fn finds_files_by_symbol_and_name() {
        for symbol in [
            "eventstream.EventService",
            "eventstream.Event",
            ".eventstream.Priority",
            "eventstream.EventService.Publish",
            "grpc.health.v1.HealthCheckResponse.ServingStatus",
        ] {
            let MessageResponse::FileDescriptorResponse(files) =
                ask(MessageRequest::FileContainingSymbol(symbol.into()))
            else {
                panic!("{symbol}")
            };
            let file =
                prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].clone())
                    .unwrap();
            assert!(file.name().ends_with(".proto"), "{symbol}");
        }
        let MessageResponse::FileDescriptorResponse(files) =
            ask(MessageRequest::FileByFilename("eventstream.proto".into()))
        else {
            panic!()
        };
        let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].clone())
            .unwrap();
        let event = file
            .message_type
            .iter()
            .find(|m| m.name() == "Event")
            .unwrap();
        assert!(event
            .field
            .iter()
            .any(|f| f.name() == "sequence" && f.number() == 7));
        assert!(
            matches!(ask(MessageRequest::FileContainingSymbol("nope.Nope".into())), MessageResponse::ErrorResponse(e) if e.error_code == 5)
        );
    }
}
