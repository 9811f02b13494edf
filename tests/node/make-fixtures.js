// Writes ../fixtures/express/*.json: what express-session 1.18 + connect-redis 9 put on the
// wire and in Redis, for the Rust tests that check the format without Node.
//
//   redis-server --port 6399 --save '' &
//   REDIS_URL=redis://127.0.0.1:6399 npm run fixtures --prefix tests/node
'use strict';

const fs = require('fs');
const path = require('path');
const { createClient } = require('redis');
const { start } = require('./app');

function version(pkg) {
  const file = path.join(__dirname, 'node_modules', pkg, 'package.json');
  return JSON.parse(fs.readFileSync(file, 'utf8')).version;
}

async function main() {
  const redisUrl = process.env.REDIS_URL;
  if (!redisUrl) throw new Error('REDIS_URL is required');
  const secret = 'fixture-secret';
  const { server, client: appClient } = await start({ redisUrl, secrets: [secret], port: 0 });
  const base = `http://127.0.0.1:${server.address().port}`;
  const redis = createClient({ url: redisUrl });
  await redis.connect();

  const login = await fetch(`${base}/login?user=1&name=alice`, { method: 'POST' });
  const setCookie = login.headers.get('set-cookie');
  const pair = setCookie.split(';')[0];
  const sid = decodeURIComponent(pair.split('=')[1]).slice(2).split('.')[0];
  const record = await redis.get(`sess:${sid}`);
  const pttl = await redis.pTTL(`sess:${sid}`);

  await fetch(`${base}/cart?item=apple`, { method: 'POST', headers: { cookie: pair } });
  const recordWithCart = await redis.get(`sess:${sid}`);

  const out = {
    generatedBy: 'tests/node/make-fixtures.js',
    versions: {
      node: process.version,
      'express-session': version('express-session'),
      'connect-redis': version('connect-redis'),
      redis: version('redis'),
    },
    secret,
    setCookie,
    cookie: pair,
    sid,
    record,
    pttlMs: pttl,
    recordWithCart,
  };
  const dir = path.join(__dirname, '..', 'fixtures', 'express');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'login.json'), JSON.stringify(out, null, 2) + '\n');
  console.log(`wrote ${path.join(dir, 'login.json')}`);

  await redis.quit();
  await appClient.quit();
  server.close();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
