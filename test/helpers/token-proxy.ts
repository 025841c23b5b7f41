import {
  Agent,
  createServer,
  request,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type OutgoingHttpHeaders,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A loopback reverse proxy that adds `Authorization: Bearer <token>` to every request, for test
 * clients that cannot send one (the MCP conformance CLI). It exists only in tests: the server's own
 * bearer-token check stays as it is. Bodies stream both ways as they arrive, so SSE responses (POST
 * and GET streams) reach the client event by event, and a client that hangs up closes the upstream
 * request too (the server must see an aborted stream as the client left it).
 */

export interface TokenProxy {
  /** The upstream URL with the proxy's host and port: same path, same query. */
  readonly url: string;
  close(): Promise<void>;
}

/** Per connection, not end to end (RFC 9110 §7.6.1): each side of the proxy has its own. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-authorization',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function endToEnd(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const named = new Set(
    String(headers.connection ?? '')
      .split(',')
      .map((name) => name.trim().toLowerCase()),
  );
  const kept: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name) && !named.has(name)) kept[name] = value;
  }
  return kept;
}

export async function startTokenProxy(upstreamUrl: string, token: string): Promise<TokenProxy> {
  const upstream = new URL(upstreamUrl);
  const agent = new Agent({ keepAlive: true });
  let own: readonly string[] = [];

  /*
   * The server checks Host and Origin against its own address (DNS rebinding). A request addressed
   * to the proxy is addressed to the server, so the proxy's host:port becomes the server's, hostname
   * kept; any other Host or Origin (a rebinding attempt) passes unchanged, for the server to refuse.
   */
  const toUpstreamAuthority = (authority: string): string => {
    if (!own.includes(authority)) return authority;
    const hostname = authority.slice(0, authority.lastIndexOf(':'));
    return `${hostname}:${upstream.port}`;
  };
  const toUpstreamOrigin = (origin: string): string => {
    const match = /^(https?:\/\/)([^/]+)$/.exec(origin);
    return match ? `${match[1] ?? ''}${toUpstreamAuthority(match[2] ?? '')}` : origin;
  };

  function forward(req: IncomingMessage, res: ServerResponse): void {
    const headers = endToEnd(req.headers);
    headers.authorization = `Bearer ${token}`;
    if (req.headers.host !== undefined) headers.host = toUpstreamAuthority(req.headers.host);
    if (req.headers.origin !== undefined) headers.origin = toUpstreamOrigin(req.headers.origin);
    const outgoing = request(
      {
        agent,
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers,
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.statusMessage, endToEnd(answer.headers));
        // Headers go out now: an SSE stream may send its first event much later.
        res.flushHeaders();
        answer.pipe(res);
        answer.on('error', () => res.destroy());
      },
    );
    outgoing.on('error', () => {
      if (res.headersSent) res.destroy();
      else res.writeHead(502, { 'content-type': 'text/plain' }).end('token proxy: upstream unreachable');
    });
    res.on('close', () => {
      if (!res.writableFinished) outgoing.destroy();
    });
    req.pipe(outgoing);
  }

  const server = createServer(forward);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  own = [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`];
  const url = new URL(upstream.href);
  url.host = `127.0.0.1:${port}`;
  return {
    url: url.href,
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      agent.destroy();
      await closed;
    },
  };
}
