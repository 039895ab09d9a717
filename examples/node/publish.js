#!/usr/bin/env node
// Publishes one MEDIUM-priority event (metadata source=node) and prints the server's response.
'use strict';
const { options, client, fail } = require('./common');

const opts = options({ topic: { type: 'string', default: 'sensors/node' } });
const event = {
  topic: opts.topic,
  payload: Buffer.from('hello from node'),
  priority: 'MEDIUM',
  metadata: { source: 'node' },
  // id and timestamp_ns are left empty/0: the server fills them in.
};
const deadline = Date.now() + 10000;
client(opts).Publish({ event }, { deadline }, (err, res) => {
  if (err) fail(err);
  console.log(`success=${res.success} message=${JSON.stringify(res.message)} latency_ns=${res.latency_ns}`);
  process.exit(res.success ? 0 : 1);
});
