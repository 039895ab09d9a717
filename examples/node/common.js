// Shared by the examples: command-line options and the EventService client.
'use strict';
const fs = require('fs');
const path = require('path');
const { parseArgs } = require('util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'eventstream.proto');

// Parses --server/--ca/--cert/--key plus the script's own options ({name: {type, default}}).
function options(extra) {
  const { values } = parseArgs({
    options: {
      server: { type: 'string', default: '127.0.0.1:9200' },
      ca: { type: 'string' },
      cert: { type: 'string' },
      key: { type: 'string' },
      ...extra,
    },
  });
  return values;
}

// An EventService client: plaintext (h2c) unless --ca/--cert/--key is given (mTLS).
function client(opts) {
  const def = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names as in the .proto: topic_pattern, timestamp_ns, ...
    longs: String, // int64/uint64 (timestamp_ns, sequence) as decimal strings
    enums: String, // Priority as its name: "HIGH"
    defaults: true, // unset fields come back as 0 / "" rather than missing
  });
  const { EventService } = grpc.loadPackageDefinition(def).eventstream;
  let creds = grpc.credentials.createInsecure();
  if (opts.ca || opts.cert || opts.key) {
    if (!opts.cert !== !opts.key) throw new Error('--cert and --key go together');
    const read = (p) => (p ? fs.readFileSync(p) : null);
    creds = grpc.credentials.createSsl(read(opts.ca), read(opts.key), read(opts.cert));
  }
  return new EventService(opts.server, creds);
}

// Prints a failed call as one line and exits 1.
function fail(err) {
  console.error(`error: ${grpc.status[err.code] || err.code}: ${err.details || err.message}`);
  process.exit(1);
}

module.exports = { options, client, fail };
