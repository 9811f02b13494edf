// An express-session + connect-redis backend configured like a typical ERP service
// (resave false, saveUninitialized false, 24 h cookie, `sess:` prefix). The Rust session
// tests start it against their own redis-server and share sessions with it both ways.
//
// Env: REDIS_URL (required), SESSION_SECRET (comma-separated, current first), PORT (0 for
// any free port). Prints `listening <port>` once ready.
'use strict';

const express = require('express');
const session = require('express-session');
const { RedisStore } = require('connect-redis');
const { createClient } = require('redis');

async function start({ redisUrl, secrets, port }) {
  const client = createClient({ url: redisUrl });
  client.on('error', (err) => console.error('redis error', err.message));
  await client.connect();

  const app = express();
  app.use(
    session({
      store: new RedisStore({ client, prefix: 'sess:', ttl: 86400 }),
      name: 'connect.sid',
      secret: secrets,
      resave: false,
      saveUninitialized: false,
      rolling: false,
      cookie: { httpOnly: true, secure: false, sameSite: 'lax', maxAge: 86400000 },
    }),
  );

  app.post('/login', (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.userId = Number(req.query.user);
      req.session.username = String(req.query.name);
      req.session.save((err2) => (err2 ? next(err2) : res.json({ ok: true })));
    });
  });
  app.get('/profile', (req, res) => {
    if (!req.session.userId) return res.status(401).json({ error: 'not logged in' });
    res.json({
      userId: req.session.userId,
      username: req.session.username,
      visits: req.session.visits || 0,
      cart: req.session.cart || null,
    });
  });
  app.post('/visit', (req, res) => {
    req.session.visits = (req.session.visits || 0) + 1;
    res.send(String(req.session.visits));
  });
  app.post('/cart', (req, res) => {
    req.session.cart = (req.session.cart || []).concat([String(req.query.item)]);
    res.json(req.session.cart);
  });
  app.post('/logout', (req, res, next) => {
    req.session.destroy((err) => (err ? next(err) : res.send('bye')));
  });

  return new Promise((resolve) => {
    const server = app.listen(port, '127.0.0.1', () => resolve({ server, client }));
  });
}

module.exports = { start };

if (require.main === module) {
  const redisUrl = process.env.REDIS_URL;
  if (!redisUrl) {
    console.error('REDIS_URL is required');
    process.exit(2);
  }
  const secrets = (process.env.SESSION_SECRET || 'keyboard cat').split(',');
  start({ redisUrl, secrets, port: Number(process.env.PORT || 0) }).then(({ server }) => {
    console.log(`listening ${server.address().port}`);
  });
}
