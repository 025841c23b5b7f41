import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = fileURLToPath(import.meta.url);
const fromSource = here.endsWith('.ts');

/** The project root: two levels above src/server (or dist/src/server when built). */
export const PROJECT_ROOT = path.resolve(path.dirname(here), fromSource ? '../..' : '../../..');

/**
 * The command that starts this server in stdio mode, for MCP clients spawned by the demo, the tests
 * and the benchmarks. From source it runs through tsx's loader (resolved from the project root).
 */
export function stdioServerCommand(configPath: string): { command: string; args: string[]; cwd: string } {
  const cli = path.join(path.dirname(here), '..', fromSource ? 'cli.ts' : 'cli.js');
  return {
    command: process.execPath,
    args: [...(fromSource ? ['--import', 'tsx'] : []), cli, 'serve', '--config', path.resolve(configPath)],
    cwd: PROJECT_ROOT,
  };
}
