// A real OpenID provider on loopback for the Trellis login tests: oauth2-mock-server (which
// nobody on this project wrote) serves discovery, JWKS, /authorize (PKCE, state, nonce) and
// /token. This script only adds what the tests must control, through a side door under
// /__peer/ on the same port:
//
//   POST /__peer/next  {"sub", "email", "name", "mutation", "addKey"}
//
// sets who the next logins are (sticky until changed), adds a signing key when `addKey`
// (a key rotation), and says how to break their ID token:
//   wrong-nonce, wrong-aud, wrong-iss, expired, unknown-kid (claims changed before signing);
//   alg-none, tampered-signature (the signed token rewritten afterwards);
//   extra-aud-no-azp (a second audience and no azp).
//
// It prints `issuer <url>` once listening; the test process reads that line.

import http from 'node:http';
import { OAuth2Issuer, OAuth2Service } from 'oauth2-mock-server';

const issuer = new OAuth2Issuer();
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

let next = { sub: 'alice', email: 'alice@example.com', name: 'Alice Example', mutation: null };

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

service.on('beforeTokenSigning', (token) => {
  // The access token carries `scope`; the ID token does not.
  if ('scope' in token.payload) return;
  const p = token.payload;
  p.sub = next.sub;
  if (next.email) {
    p.email = next.email;
    p.email_verified = true;
  }
  if (next.name) p.name = next.name;
  const now = Math.floor(Date.now() / 1000);
  switch (next.mutation) {
    case 'wrong-nonce': p.nonce = 'not-the-nonce-you-sent'; break;
    case 'wrong-aud': p.aud = 'some-other-client'; break;
    case 'extra-aud-no-azp': p.aud = [p.aud, 'some-other-client']; delete p.azp; break;
    case 'wrong-iss': p.iss = 'https://evil.example'; break;
    case 'expired': p.iat = now - 7200; p.nbf = now - 7200; p.exp = now - 3600; break;
    case 'unknown-kid': token.header.kid = 'no-such-key'; break;
    default: break;
  }
});

service.on('beforeResponse', (response) => {
  const idToken = response.body?.id_token;
  if (typeof idToken !== 'string') return;
  const [header, payload, signature] = idToken.split('.');
  switch (next.mutation) {
    case 'alg-none': {
      const h = JSON.parse(Buffer.from(header, 'base64url').toString());
      h.alg = 'none';
      response.body.id_token = `${b64url(h)}.${payload}.`;
      break;
    }
    case 'tampered-signature': {
      const sig = Buffer.from(signature, 'base64url');
      sig[sig.length - 1] ^= 0x01;
      response.body.id_token = `${header}.${payload}.${sig.toString('base64url')}`;
      break;
    }
    default: break;
  }
});

const handler = service.requestHandler;
const server = http.createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/__peer/next') {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
      (async () => {
        const { addKey, ...user } = JSON.parse(body);
        next = { mutation: null, ...user };
        // Key rotation: a second key joins the JWKS; tokens then alternate between keys.
        if (addKey) await issuer.keys.generate('RS256');
        res.writeHead(204).end();
      })().catch((e) => res.writeHead(400).end(String(e)));
    });
    return;
  }
  handler(req, res);
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  issuer.url = `http://127.0.0.1:${port}`;
  console.log(`issuer ${issuer.url}`);
});

// The test harness kills the process; also end when its stdin closes (the parent died).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
