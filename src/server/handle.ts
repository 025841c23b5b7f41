import type { Config } from '../config.js';
import type { Pipeline } from '../pipeline.js';

/**
 * What the MCP tools and resources reach: the config at once (tool descriptions and input schemas are
 * built from it), the pipeline once it has opened. Over stdio the server answers `initialize` while the
 * pipeline opens (store, gate, resuming pending requests); a call made meanwhile waits for it, and a
 * pipeline that fails to open fails every call and ends the server.
 */
export interface PipelineHandle {
  readonly config: Config;
  pipeline(): Promise<Pipeline>;
}

/** A handle on a pipeline that is open already (HTTP opens it before it listens). */
export function openedHandle(pipeline: Pipeline): PipelineHandle {
  return { config: pipeline.config, pipeline: () => Promise.resolve(pipeline) };
}
