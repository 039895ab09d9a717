// Publishes one event (metadata source=go) to eventstream's gRPC door and prints the response.
//
// Built with GO111MODULE=off against Debian's Go packages; see run.sh and README.md.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	pb "eventstream/eventstreampb"
)

func main() {
	server := flag.String("server", "127.0.0.1:9200", "host:port of the gRPC door")
	topic := flag.String("topic", "orders/new", "topic to publish to")
	ca := flag.String("ca", "", "CA certificate (PEM) that signed the server's certificate; enables TLS")
	cert := flag.String("cert", "", "client certificate (PEM) for mTLS")
	key := flag.String("key", "", "client private key (PEM) for mTLS")
	flag.Parse()
	log.SetFlags(0)

	conn, err := grpc.Dial(*server, transport(*ca, *cert, *key))
	if err != nil {
		log.Fatalf("error: dial %s: %v", *server, err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := pb.NewEventServiceClient(conn).Publish(ctx, &pb.PublishRequest{Event: &pb.Event{
		Topic:    *topic,
		Payload:  []byte("hello from go"),
		Priority: pb.Priority_MEDIUM,
		Metadata: map[string]string{"source": "go"},
		// Id and TimestampNs are left empty/0: the server fills them in.
	}})
	if err != nil {
		log.Fatalf("error: %v", err)
	}
	fmt.Printf("success=%v message=%q latency_ns=%d\n", resp.Success, resp.Message, resp.LatencyNs)
	if !resp.Success {
		os.Exit(1)
	}
}

// transport is plaintext (h2c) unless a CA or client certificate is given (TLS / mTLS).
func transport(ca, cert, key string) grpc.DialOption {
	if ca == "" && cert == "" && key == "" {
		return grpc.WithInsecure()
	}
	cfg := &tls.Config{}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			log.Fatalf("error: %v", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			log.Fatalf("error: no certificate in %s", ca)
		}
	}
	if cert != "" || key != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			log.Fatalf("error: --cert/--key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}
