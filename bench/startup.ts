/**
 * Spawn → `initialize` answered: the built server against a bare MCP SDK server with one tool, both
 * started with plain node over stdio, alternating, so the difference is what the server loads and
 * does before it answers.
 */
import path from 'node:path';
import { PROJECT_ROOT, spawnOverStdio, spawnServer, type Build, type Workspace } from './harness.js';

export const BARE_SERVER = path.join(PROJECT_ROOT, 'bench', 'bare-server.mjs');

export interface StartupResult {
  readonly server: number[];
  readonly bare: number[];
  /** server / bare of each back-to-back pair: cancels drift in the machine's load. */
  readonly pairRatios: number[];
}

/** `runs` starts of each, after one unmeasured start of each (file cache, compile cache). */
export async function measureStartup(
  build: Build,
  workspace: Workspace,
  databaseUrl: string,
  runs: number,
): Promise<StartupResult> {
  const result: StartupResult = { server: [], bare: [], pairRatios: [] };
  const once = async (which: 'server' | 'bare'): Promise<number> => {
    const spawned =
      which === 'server'
        ? await spawnServer(build, workspace, databaseUrl)
        : await spawnOverStdio([BARE_SERVER]);
    await spawned.close();
    return spawned.initializeMs;
  };
  await once('server');
  await once('bare');
  for (let i = 0; i < runs; i += 1) {
    const first = i % 2 === 0 ? 'server' : 'bare';
    const a = await once(first);
    const b = await once(first === 'server' ? 'bare' : 'server');
    const server = first === 'server' ? a : b;
    const bare = first === 'server' ? b : a;
    result.server.push(server);
    result.bare.push(bare);
    result.pairRatios.push(server / bare);
  }
  return result;
}
