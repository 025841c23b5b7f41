import { McpServer, ResourceTemplate } from '@modelcontextprotocol/sdk/server/mcp.js';
import { SubscribeRequestSchema, UnsubscribeRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import type { PipelineHandle } from './handle.js';

/**
 * Approvals as MCP resources (`approval://APR-…`, the Markdown file), for clients that show them:
 * the list changes when a request appears (list_changed), and a subscribed approval is announced
 * when its decision or result changes (resources/updated). Returns the function that stops it.
 */
export function registerApprovalResources(server: McpServer, gate: PipelineHandle): () => void {
  server.registerResource(
    'approval',
    new ResourceTemplate('approval://{id}', {
      list: async () => ({
        resources: (await (await gate.pipeline()).list()).map((a) => ({
          uri: `approval://${a.approval_id}`,
          name: a.approval_id,
          title: `${a.approval_id} ${a.status}: ${a.title}`,
          mimeType: 'text/markdown',
        })),
      }),
    }),
    {
      title: 'Approval request',
      description: 'The Markdown approval file of a request, as the reviewer sees it.',
      mimeType: 'text/markdown',
    },
    async (uri, { id }) => ({
      contents: [
        {
          uri: uri.href,
          mimeType: 'text/markdown',
          text: await (await gate.pipeline()).fileText(String(id)),
        },
      ],
    }),
  );
  const subscribed = new Set<string>();
  server.server.registerCapabilities({ resources: { subscribe: true, listChanged: true } });
  server.server.setRequestHandler(SubscribeRequestSchema, async (request) => {
    subscribed.add(request.params.uri);
    return {};
  });
  server.server.setRequestHandler(UnsubscribeRequestSchema, async (request) => {
    subscribed.delete(request.params.uri);
    return {};
  });
  const known = new Set<string>();
  let stopped = false;
  let stop: () => void = () => undefined;
  // A pipeline that fails to open has nothing to announce; the server reports that failure itself.
  void gate.pipeline().then(
    (pipeline) => {
      if (stopped) return;
      stop = pipeline.onChange((id, change) => {
        // The resource is the file: its execution events change it only once shown ('shown').
        if (!server.isConnected() || change.kind === 'execution') return;
        const uri = `approval://${id}`;
        if (!known.has(id)) {
          known.add(id);
          server.sendResourceListChanged();
        }
        if (subscribed.has(uri)) void server.server.sendResourceUpdated({ uri }).catch(() => undefined);
      });
    },
    () => undefined,
  );
  return () => {
    stopped = true;
    stop();
  };
}
