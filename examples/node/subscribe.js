#!/usr/bin/env node
// Subscribes to sensors/* (min priority LOW) and prints each event as `topic sequence priority payload`.
'use strict';
const { options, client, fail } = require('./common');

const opts = options({
  pattern: { type: 'string', default: 'sensors/*' }, // `*` one segment, final `**` one or more
  'min-priority': { type: 'string', default: 'LOW' },
  count: { type: 'string', default: '0' }, // exit after this many events (0: run until stopped)
});
const count = Number(opts.count);
let received = 0;

const call = client(opts).Subscribe({ topic_pattern: opts.pattern, min_priority: opts['min-priority'] });
// The response headers arrive once the server has accepted the call; check.sh waits for this line.
call.on('metadata', () => console.error(`subscribed to ${opts.pattern}`));
call.on('data', (e) => {
  console.log(`${e.topic} ${e.sequence} ${e.priority} ${e.payload.toString('utf8')}`);
  received += 1;
  if (count && received >= count) process.exit(0);
});
call.on('error', fail);
call.on('end', () => {
  if (count && received < count) {
    console.error(`stream ended after ${received} of ${count} events`);
    process.exit(1);
  }
});
