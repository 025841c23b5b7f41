import { describe, expect, it } from 'vitest';
import { analyseSql, assertExecutable } from '../../src/migration/analyse.js';
import { GateError } from '../../src/errors.js';

async function code(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof GateError) return error.code;
    throw error;
  }
  throw new Error('expected a GateError');
}

describe('analysing SQL with the Postgres grammar', () => {
  it('splits statements exactly, including dollar-quoted bodies and quoted semicolons', async () => {
    const sql =
      "ALTER TABLE customers ADD COLUMN note text DEFAULT 'a;b';\n" +
      'CREATE FUNCTION f() RETURNS int AS $$ select 1; select 2; $$ LANGUAGE sql;\n' +
      '-- a comment; with a semicolon\nUPDATE customers SET note = $t$;$t$ WHERE id = 1';
    const { statements } = await analyseSql(sql);
    expect(statements.map((s) => s.kind)).toEqual(['AlterTableStmt', 'CreateFunctionStmt', 'UpdateStmt']);
    expect(statements[1]?.text).toContain('$$ select 1; select 2; $$');
    for (const s of statements) expect(sql.slice(s.offset, s.offset + s.text.length)).toBe(s.text);
  });

  it('keeps character offsets right after multi-byte characters', async () => {
    const sql = "COMMENT ON TABLE t IS 'café ☕';\nALTER TABLE t ADD COLUMN x int";
    const { statements } = await analyseSql(sql);
    expect(statements[1]?.text).toBe('ALTER TABLE t ADD COLUMN x int');
    expect(sql.slice(statements[1]?.offset)).toBe('ALTER TABLE t ADD COLUMN x int');
  });

  it('names the relations each statement touches', async () => {
    const { statements } = await analyseSql(
      'CREATE INDEX i ON app.customers(email); DELETE FROM orders WHERE id IN (SELECT id FROM old_orders)',
    );
    expect(statements[0]?.relations).toEqual(['app.customers']);
    expect([...(statements[1]?.relations ?? [])].sort()).toEqual(['old_orders', 'orders']);
  });

  it('refuses SQL the parser rejects, with line and column', async () => {
    try {
      await analyseSql('SELECT 1;\nALTER TABLE customers ADD COLUMN');
      throw new Error('expected a parse error');
    } catch (error) {
      expect(error).toBeInstanceOf(GateError);
      expect((error as GateError).code).toBe('SQL_PARSE_ERROR');
      expect((error as GateError).message).toMatch(/line 2, column 33/);
    }
  });

  it('refuses SQL that holds no statement', async () => {
    expect(await code(analyseSql('  -- nothing here\n'))).toBe('SQL_EMPTY');
  });

  it('detects statements that cannot run inside a transaction', async () => {
    const cases: Array<[string, boolean]> = [
      ['CREATE INDEX CONCURRENTLY i ON t(c)', false],
      ['CREATE INDEX i ON t(c)', true],
      ['DROP INDEX CONCURRENTLY i', false],
      ['REINDEX INDEX CONCURRENTLY i', false],
      ['REINDEX INDEX i', true],
      ['VACUUM t', false],
      ['ANALYZE t', true],
      ['CREATE DATABASE d', false],
      ['ALTER SYSTEM SET work_mem = 1', false],
      ['CLUSTER', false],
      ['CLUSTER t USING i', true],
    ];
    for (const [sql, transactional] of cases) {
      const { statements } = await analyseSql(sql);
      expect(statements[0]?.transactional, sql).toBe(transactional);
    }
  });

  it('accepts non-transactional statements when not a dry run', async () => {
    const analysis = await analyseSql('ALTER TABLE t ADD c int; CREATE INDEX CONCURRENTLY i ON t(c)');
    expect(() => assertExecutable(analysis, { dryRun: false, gateSchemas: [] })).not.toThrow();
  });

  it('refuses transaction control, and dry runs of statements that cannot be rolled back', async () => {
    for (const [sql, dryRun, expected] of [
      ['BEGIN; ALTER TABLE t ADD c int; COMMIT', false, 'SQL_TRANSACTION_CONTROL'],
      ['SAVEPOINT s', false, 'SQL_TRANSACTION_CONTROL'],
      ['ALTER TABLE t ADD c int; CREATE INDEX CONCURRENTLY i ON t(c)', true, 'DRY_RUN_IMPOSSIBLE'],
    ] as const) {
      const analysis = await analyseSql(sql);
      expect(() => assertExecutable(analysis, { dryRun, gateSchemas: [] }), sql).toThrow(
        expect.objectContaining({ code: expected }),
      );
    }
  });

  it('refuses SQL that would touch the gate schemas, only when they are named', async () => {
    const analysis = await analyseSql('INSERT INTO approval_gate.ledger VALUES (1)');
    expect(() => assertExecutable(analysis, { dryRun: false, gateSchemas: [] })).not.toThrow();
    expect(() =>
      assertExecutable(analysis, { dryRun: false, gateSchemas: ['approval_gate', 'approval_gate_backup'] }),
    ).toThrow(expect.objectContaining({ code: 'SQL_TOUCHES_GATE' }));
  });

  it('refuses session resets and lexer settings inside DO blocks, naming the statement', async () => {
    const analysis = await analyseSql('SELECT 1; DO $$ BEGIN RESET ALL; END $$');
    expect(() => assertExecutable(analysis, { dryRun: false, gateSchemas: [] })).toThrow(
      expect.objectContaining({
        code: 'SQL_SESSION_RESET',
        message: expect.stringMatching(/^Statement 2 \(inside the DO block\)/),
      }),
    );
  });
});
