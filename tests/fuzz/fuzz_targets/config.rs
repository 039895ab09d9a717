//! The configuration file is operator input: whatever YAML it holds, `Config::from_yaml`,
//! `validate` and `shard_cpus` answer with a config or an error naming what is wrong, and
//! never panic. A config that passes `validate` gives the deadlines the server computes from
//! it (drain, idle timeout) without overflowing.
#![no_main]

use std::time::{Duration, Instant};

use eventstream::config::Config;
use libfuzzer_sys::fuzz_target;

/// CPU lists `shard_cpus` is checked against: none known, one, and a few.
const CPU_LISTS: [&[usize]; 3] = [&[], &[0], &[0, 1, 2, 3]];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let config = match Config::from_yaml(&text) {
        Ok(config) => config,
        Err(message) => {
            assert!(!message.is_empty(), "a parse error says what is wrong");
            return;
        }
    };
    if let Err(e) = config.validate() {
        assert!(!e.to_string().is_empty(), "a refusal says what is wrong");
        return;
    }
    let _ = config.udp_enabled();
    let now = Instant::now();
    let _ = now + config.drain_timeout();
    let _ = now + Duration::from_millis(config.grpc.idle_timeout_ms);
    for cpus in CPU_LISTS {
        if let Ok(placement) = config.shard_cpus(cpus) {
            assert!(!placement.is_empty(), "at least one shard");
            assert!(placement.iter().flatten().all(|cpu| cpus.contains(cpu)));
        }
    }
});
