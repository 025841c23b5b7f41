import { watch, type FSWatcher } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { stringify } from 'yaml';
import { decideInFile } from './approvals/human-edit.js';
import { ApprovalStore } from './approvals/store.js';
import type { ConfigInput } from './config.js';
import { openDatabase } from './db/index.js';
import { stdioServerCommand } from './server/launch.js';
import type { ToolOutcome } from './server/outcome.js';

/** The reference request's migration, as an agent would submit it. */
export const REFERENCE_MIGRATION = {
  environment: 'production',
  database: 'main_db',
  migration_file: 'migrations/20260213_add_loyalty_tier.sql',
  sql: "ALTER TABLE customers\nADD COLUMN loyalty_tier VARCHAR(20) DEFAULT 'bronze'\nNOT NULL;\n\nCREATE INDEX idx_loyalty_tier ON customers(loyalty_tier);\n",
  rollback_sql: 'DROP INDEX idx_loyalty_tier;\nALTER TABLE customers DROP COLUMN loyalty_tier;\n',
  dry_run: false,
  backup_before: false,
  title: 'Update Production Database Schema',
  reason:
    'Add a loyalty_tier column to customers for the loyalty program launching next week; every existing customer starts at bronze.',
  priority: 'critical',
} as const;

export interface DemoOptions {
  readonly workspace: string;
  readonly decide?: 'approve' | 'reject';
  readonly as: string;
}

// The demo's own narration goes to stdout: it is a terminal program, not an MCP server.
const say = (line = '') => process.stdout.write(`${line}\n`);

/** The demo's embedded database: a customers table of 100 rows, analysed. */
export async function seedCustomers(dataDir: string): Promise<void> {
  const database = openDatabase('main_db', { client: 'pglite', path: dataDir });
  try {
    await database.withClient(async (session) => {
      await session.query(
        'create table customers (id serial primary key, name text not null, email text not null)',
      );
      await session.query(
        `insert into customers (name, email)
           select 'Customer ' || n, 'customer' || n || '@example.com' from generate_series(1, 100) as n`,
      );
      // Statistics, so the approval file's impact table shows a row estimate.
      await session.query('analyze customers');
    });
  } finally {
    await database.close();
  }
}

async function describeCustomers(dataDir: string): Promise<string[]> {
  const database = openDatabase('main_db', { client: 'pglite', path: dataDir });
  try {
    const { rows } = await database.withClient((session) =>
      session.query(
        `select column_name from information_schema.columns where table_name = 'customers' order by ordinal_position`,
      ),
    );
    return rows.map((row) => String(row.column_name));
  } finally {
    await database.close();
  }
}

/** Calls `onFile` with the path of the first approval file that appears in `dir`. */
function onFirstApprovalFile(dir: string, onFile: (file: string) => Promise<void>): FSWatcher {
  const watcher = watch(dir, (_event, name) => {
    if (name !== null && ApprovalStore.idOfFileName(name.toString()) !== null) {
      watcher.close();
      void onFile(path.join(dir, name.toString()));
    }
  });
  return watcher;
}

function outcomeOf(result: CallToolResult): ToolOutcome {
  return result.structuredContent as ToolOutcome;
}

export async function runDemo(options: DemoOptions): Promise<number> {
  const workspace = path.resolve(options.workspace);
  await rm(workspace, { recursive: true, force: true });
  const approvalsDir = path.join(workspace, 'approvals');
  await mkdir(approvalsDir, { recursive: true });
  const dataDir = path.join(workspace, 'pgdata');
  const config: ConfigInput = {
    approvals_dir: 'approvals',
    state_dir: 'state',
    databases: { main_db: { client: 'pglite', path: 'pgdata' } },
    environments: { production: { databases: ['main_db'] } },
  };
  const configPath = path.join(workspace, 'approval-gate.yaml');
  await writeFile(configPath, stringify(config));

  say(`Demo workspace: ${workspace}`);
  say('Creating the embedded database (PGlite) with a customers table of 100 rows…');
  await seedCustomers(dataDir);

  const { command, args, cwd } = stdioServerCommand(configPath);
  const transport = new StdioClientTransport({ command, args, cwd, stderr: 'ignore' });
  const client = new Client({ name: 'approval-gate-demo', version: '0.1.0' });
  await client.connect(transport);
  say('MCP server started over stdio. The "agent" now calls execute_migration with the reference migration.');

  const watcher = onFirstApprovalFile(approvalsDir, async (file) => {
    say();
    say(`Approval file written: ${file}`);
    if (options.decide) {
      say(
        `Deciding as "${options.as}": ${options.decide === 'approve' ? 'APPROVED' : 'REJECTED'} (scripted, --decide)…`,
      );
      await new Promise((resolve) => setTimeout(resolve, 500));
      await decideInFile(
        file,
        options.decide === 'approve'
          ? { status: 'APPROVED', decidedBy: options.as }
          : {
              status: 'REJECTED',
              decidedBy: options.as,
              reason: 'Demo rejection: not during the launch freeze.',
            },
      );
    } else {
      say('To decide, open it in any editor and, in the front matter at the top:');
      say('  - change status: "PENDING" to status: "APPROVED" (or "REJECTED" with reason: "…")');
      say('  - fill in decided_by: "Your Name"');
      say('  - save. The server reacts within milliseconds. The request expires in 15 minutes.');
    }
    say();
  });

  const onprogress = (progress: { progress: number; message?: string }) =>
    say(`  … still waiting (${progress.progress} s): ${progress.message ?? ''}`);
  let outcome = outcomeOf(
    (await client.callTool({ name: 'execute_migration', arguments: { ...REFERENCE_MIGRATION } }, undefined, {
      onprogress,
      resetTimeoutOnProgress: true,
      timeout: 120_000,
    })) as CallToolResult,
  );
  while (!outcome.final && outcome.approval_id) {
    say(`  ${outcome.status}: ${outcome.message}`);
    outcome = outcomeOf(
      (await client.callTool({ name: 'await_approval', arguments: { id: outcome.approval_id } }, undefined, {
        onprogress,
        resetTimeoutOnProgress: true,
        timeout: 120_000,
      })) as CallToolResult,
    );
  }
  watcher.close();
  await client.close();

  say('Result returned to the agent:');
  say(`  status: ${outcome.status}, execution: ${outcome.execution}`);
  say(`  ${outcome.message}`);
  say(`customers columns now: ${(await describeCustomers(dataDir)).join(', ')}`);
  if (outcome.file) say(`The approval file records the outcome: ${outcome.file}`);
  const expected = options.decide === 'reject' ? 'REJECTED' : 'APPROVED';
  return outcome.status === expected || (!options.decide && outcome.final) ? 0 : 1;
}
