import { describe, expect, it } from 'vitest';
import { analyseSql, assertExecutable } from '../../src/migration/analyse.js';
import {
  DRY_RUN_REFUSED_CODES,
  escapesTransaction,
  RISK_TITLES,
  type RiskCode,
  type RiskFinding,
} from '../../src/migration/risk-codes.js';
import { assertDryRunIsDry, assessRisks } from '../../src/migration/risks.js';

const LIMITS = { lockTimeoutMs: 2000, statementTimeoutMs: 60_000, lockRetries: 5 };

async function findings(sql: string): Promise<RiskFinding[]> {
  const { statements } = await analyseSql(sql);
  return assessRisks(statements, LIMITS).findings;
}

async function codes(sql: string): Promise<RiskCode[]> {
  return (await findings(sql)).map((f) => f.code);
}

async function refusal(sql: string, options: { dryRun?: boolean; gateSchemas?: string[] } = {}) {
  const analysis = await analyseSql(sql);
  try {
    assertExecutable(analysis, { dryRun: options.dryRun ?? false, gateSchemas: options.gateSchemas ?? [] });
    const found = assessRisks(analysis.statements, LIMITS).findings;
    assertDryRunIsDry(found, { dryRun: options.dryRun ?? false });
  } catch (error) {
    return error as { code: string; message: string };
  }
  return null;
}

describe('effects that escape the transaction', () => {
  const cases: Array<[string, string, RiskCode, number]> = [
    ['COPY TO PROGRAM runs an OS command', "COPY t TO PROGRAM 'touch /tmp/x'", 'COPY_PROGRAM', 1],
    ['COPY FROM PROGRAM runs an OS command', "COPY t FROM PROGRAM 'curl x'", 'COPY_PROGRAM', 1],
    ['COPY from a server file', "COPY t FROM '/etc/passwd'", 'COPY_SERVER_FILE', 1],
    ['COPY of a query to a server file', "COPY (SELECT 1) TO '/tmp/out'", 'COPY_SERVER_FILE', 1],
    [
      'dblink_exec, which commits on another connection',
      "SELECT dblink_exec('dbname=test', 'create table x()')",
      'REMOTE_SQL',
      1,
    ],
    [
      'dblink in FROM, in any schema',
      "SELECT * FROM ext.dblink('c', 'select 1') AS r(i int)",
      'REMOTE_SQL',
      1,
    ],
    ['pg_terminate_backend', 'SELECT pg_terminate_backend(123)', 'SESSION_SIGNAL', 1],
    ['pg_catalog.pg_terminate_backend', 'SELECT pg_catalog.pg_terminate_backend(1)', 'SESSION_SIGNAL', 1],
    ['pg_cancel_backend in a WHERE clause', 'DELETE FROM t WHERE pg_cancel_backend(id)', 'SESSION_SIGNAL', 1],
    ['pg_read_file', "SELECT pg_read_file('/etc/passwd')", 'SERVER_FILE_ACCESS', 1],
    ['lo_export', "SELECT lo_export(1, '/tmp/x')", 'SERVER_FILE_ACCESS', 1],
    ['adminpack in any schema', "SELECT admin.pg_file_write('/tmp/x', 'y', false)", 'SERVER_FILE_ACCESS', 1],
    ['ALTER SYSTEM', 'ALTER SYSTEM SET work_mem = 1', 'SERVER_ADMIN', 1],
    ['CHECKPOINT', 'CHECKPOINT', 'SERVER_ADMIN', 1],
    ['pg_reload_conf', 'SELECT pg_reload_conf()', 'SERVER_ADMIN', 1],
    ['a replication origin function', "SELECT pg_replication_origin_create('o')", 'SERVER_ADMIN', 1],
    ['CREATE DATABASE', 'CREATE DATABASE d', 'DATABASE_DDL', 1],
    ['ALTER DATABASE SET', 'ALTER DATABASE d SET work_mem = 1', 'DATABASE_DDL', 1],
    ['ALTER DATABASE RENAME', 'ALTER DATABASE d RENAME TO e', 'DATABASE_DDL', 1],
    ['CREATE TABLESPACE', "CREATE TABLESPACE s LOCATION '/tmp'", 'TABLESPACE_DDL', 1],
    ['CREATE ROLE', 'CREATE ROLE r LOGIN', 'ROLE_DDL', 1],
    ['GRANT of a role', 'GRANT admin TO r', 'ROLE_DDL', 1],
    ['ALTER ROLE RENAME', 'ALTER ROLE r RENAME TO s', 'ROLE_DDL', 1],
    ['DROP OWNED', 'DROP OWNED BY r', 'ROLE_DDL', 1],
    [
      'a call in a column default',
      'ALTER TABLE t ADD c int DEFAULT pg_terminate_backend(1)::int',
      'SESSION_SIGNAL',
      1,
    ],
    ['a call in CALL', 'CALL dblink_exec_proc()', 'REMOTE_SQL', 1],
    [
      'EXECUTE of a decoded string in a DO block',
      "DO $$ BEGIN EXECUTE convert_from(decode('64726f70207461626c652074','hex'),'UTF8'); END $$",
      'DYNAMIC_SQL',
      1,
    ],
    [
      'FOR ... IN EXECUTE in a DO block',
      "DO $$ DECLARE r record; BEGIN FOR r IN EXECUTE 'select 1' LOOP END LOOP; END $$",
      'DYNAMIC_SQL',
      1,
    ],
    ['a DO block in another language', 'DO LANGUAGE plpython3u $$ import os $$', 'UNANALYSED_CODE', 1],
    ['a DO block that does not parse', 'DO $$ BEGIN not plpgsql at all; END $$', 'UNANALYSED_CODE', 1],
    [
      'a function created then called with EXECUTE inside, on the calling statement',
      "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'select 1'; END $$; SELECT 1; SELECT app.f()",
      'DYNAMIC_SQL',
      3,
    ],
    [
      'a procedure created then CALLed that uses dblink',
      "CREATE PROCEDURE p() LANGUAGE sql AS $$ SELECT dblink_exec('c', 'x') $$; CALL p()",
      'REMOTE_SQL',
      2,
    ],
    [
      'a BEGIN ATOMIC function called through another function',
      "CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT pg_terminate_backend(1)::int; END; CREATE FUNCTION h() RETURNS int LANGUAGE sql AS 'select g()'; SELECT h()",
      'SESSION_SIGNAL',
      3,
    ],
    [
      'a trigger function in another language, on the first statement that could fire it',
      'CREATE FUNCTION tg() RETURNS trigger LANGUAGE plperl AS $$ 1 $$; CREATE TRIGGER x AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION tg(); INSERT INTO t VALUES (1)',
      'UNANALYSED_CODE',
      3,
    ],
    [
      'a C function, whose library loads when created',
      "CREATE FUNCTION c() RETURNS int LANGUAGE c AS 'lib', 'sym'",
      'UNANALYSED_CODE',
      1,
    ],
    ['dblink inside a DO block', "DO $$ BEGIN PERFORM dblink_exec('c', 'x'); END $$", 'REMOTE_SQL', 1],
  ];
  for (const [what, sql, code, statement] of cases) {
    it(`flags ${what}`, async () => {
      const found = (await findings(sql)).filter((f) => f.code === code);
      expect(
        found.map((f) => f.statement),
        sql,
      ).toContain(statement);
      for (const f of found) {
        // A new, empty database takes nothing from anyone: shown, and refused in a dry run, not alarming.
        expect(f.severity).toBe(sql.startsWith('CREATE DATABASE') ? 'info' : 'danger');
        expect(f.message).not.toMatch(/`/);
        expect(DRY_RUN_REFUSED_CODES.has(f.code)).toBe(true);
        expect(escapesTransaction(f)).toBe(f.code !== 'ROLE_DDL');
        expect(RISK_TITLES[f.code]).toBeTruthy();
      }
    });
  }

  it('says dynamic SQL cannot be analysed', async () => {
    const [found] = (await findings("DO $$ BEGIN EXECUTE 'x'; END $$")).filter(
      (f) => f.code === 'DYNAMIC_SQL',
    );
    expect(found?.message).toContain('contents cannot be analysed');
    expect(found?.message).toMatch(/^Inside the DO block: /);
  });

  it('names the function and the statement that created it in findings from its body', async () => {
    const result = await findings(
      'CREATE FUNCTION kill(n int) RETURNS void LANGUAGE plpgsql AS $$ DECLARE a bool; BEGIN a := pg_terminate_backend(n); END $$; SELECT kill(1)',
    );
    const found = result.find((f) => f.code === 'SESSION_SIGNAL');
    expect(found).toMatchObject({ statement: 2 });
    expect(found?.message).toMatch(/^Inside function kill \(created by statement 1\): /);
  });

  it('applies the top-level rules to static SQL in a DO block, on the DO statement', async () => {
    const result = await findings('SELECT 1; DO $$ BEGIN DROP TABLE t; END $$');
    const drop = result.find((f) => f.code === 'DROP_TABLE');
    expect(drop).toMatchObject({ statement: 2, severity: 'danger' });
    expect(drop?.message).toMatch(/^Inside the DO block: DROP TABLE destroys t/);
  });

  it('gives a plpgsql DO block the same findings as its statement at top level, and no DYNAMIC_SQL', async () => {
    const sql = 'ALTER TABLE t ADD COLUMN c int DEFAULT random()';
    const top = await findings(sql);
    const nested = await findings(`DO $$ BEGIN ${sql}; END $$`);
    expect(nested.map((f) => f.code)).toEqual(top.map((f) => f.code));
    expect(await codes('DO $$ BEGIN ALTER TABLE t ADD COLUMN c int; END $$')).toEqual(
      await codes('ALTER TABLE t ADD COLUMN c int'),
    );
  });

  it('does not analyse a function that is created but never called', async () => {
    expect(
      await codes(
        "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'x'; PERFORM dblink_exec('c', 'x'); END $$",
      ),
    ).toEqual([]);
  });

  it('analyses a recursive function once per calling statement', async () => {
    const result = await codes(
      'CREATE FUNCTION r() RETURNS int LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_cancel_backend(1); RETURN r(); END $$; SELECT r()',
    );
    expect(result).toEqual(['SESSION_SIGNAL']);
  });

  it('stops at a nesting limit instead of following a nesting bomb', async () => {
    let sql = 'PERFORM 1;';
    for (let i = 0; i < 12; i += 1) sql = `EXECUTE 'x'; DO $d${i}$ BEGIN ${sql} END $d${i}$;`;
    const result = await findings(`DO $top$ BEGIN ${sql} END $top$`);
    expect(result.map((f) => f.code)).toContain('UNANALYSED_CODE');
  });

  it('does not let a DO body close the quote the gate wraps it in', async () => {
    expect(await codes('DO $x$ BEGIN PERFORM 1; -- $gate$ $gate1$\n DROP TABLE t; END $x$')).toContain(
      'DROP_TABLE',
    );
  });
});

describe('timeout overrides', () => {
  const cases: Array<[string, string]> = [
    ['set_config of lock_timeout', "SELECT set_config('lock_timeout','0',true)"],
    ['set_config of a name chosen at run time', "SELECT set_config(x, '0', false) FROM t"],
    ['RESET of lock_timeout', 'RESET lock_timeout'],
    ['SET LOCAL statement_timeout TO DEFAULT', 'SET LOCAL statement_timeout TO DEFAULT'],
    ['SET idle_in_transaction_session_timeout', 'SET idle_in_transaction_session_timeout = 0'],
    ['SET transaction_timeout FROM CURRENT', 'SET transaction_timeout FROM CURRENT'],
    ['set_config in a DO block', "DO $$ BEGIN PERFORM set_config('statement_timeout', '0', true); END $$"],
    ['SET lock_timeout in a DO block', 'DO $$ BEGIN SET LOCAL lock_timeout = 0; END $$'],
  ];
  for (const [what, sql] of cases) {
    it(`flags ${what}`, async () => {
      expect(await codes(sql)).toContain('TIMEOUT_OVERRIDE');
    });
  }

  it('says a setting chosen at run time is one', async () => {
    const [found] = await findings("SELECT set_config(x, '0', false) FROM t");
    expect(found?.message).toContain('sets a setting chosen at run time');
  });
});

describe('what is not flagged', () => {
  const cases: Array<[string, string]> = [
    ['ordinary DDL', 'CREATE TABLE t (id int); CREATE INDEX i ON t(id)'],
    ['ordinary DML', 'INSERT INTO t VALUES (1); UPDATE t SET c = 1 WHERE id = 2; SELECT count(*) FROM t'],
    ['SET LOCAL search_path', 'SET LOCAL search_path = app'],
    ['set_config of another setting', "SELECT set_config('search_path', 'app', true)"],
    ['a function named like dblink but not dblink_', "SELECT dblinkish('x')"],
    ['pg_terminate_backend in a user schema', 'SELECT public.pg_terminate_backend(1)'],
    ['pg_read_file in a user schema', "SELECT app.pg_read_file('x')"],
    [
      'a BEGIN ATOMIC function that is created but never called',
      'CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT pg_terminate_backend(1)::int; END',
    ],
    ['a plpgsql DO block of plain SQL', 'DO $$ BEGIN INSERT INTO t VALUES (1); END $$'],
    [
      'a plpgsql function called later with only static SQL',
      'CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN 1; END $$; SELECT f()',
    ],
  ];
  for (const [what, sql] of cases) {
    it(`does not flag ${what}`, async () => {
      // The executor's own lock_timeout note is information, not a flag.
      expect(
        (await codes(sql)).filter((c) => c !== 'LOCK_TIMEOUT_ENFORCED'),
        sql,
      ).toEqual([]);
    });
  }
});

describe('refusals at request time', () => {
  const cases: Array<[string, string, string, { dryRun?: boolean; gateSchemas?: string[] }?]> = [
    ['SET standard_conforming_strings', 'SET standard_conforming_strings = off', 'SQL_LEXER_SETTING'],
    ['SET NAMES (client_encoding)', "SET NAMES 'SJIS'", 'SQL_LEXER_SETTING'],
    ['RESET backslash_quote', 'RESET backslash_quote', 'SQL_LEXER_SETTING'],
    [
      'set_config of client_encoding',
      "SELECT set_config('client_encoding', 'SJIS', true)",
      'SQL_LEXER_SETTING',
    ],
    [
      'a lexer setting inside a DO block',
      'DO $$ BEGIN SET escape_string_warning = off; END $$',
      'SQL_LEXER_SETTING',
    ],
    ['RESET ALL', 'RESET ALL', 'SQL_SESSION_RESET'],
    ['DISCARD ALL', 'DISCARD ALL', 'SQL_SESSION_RESET'],
    ['SET SESSION AUTHORIZATION', 'SET SESSION AUTHORIZATION postgres', 'SQL_SESSION_RESET'],
    ['RESET SESSION AUTHORIZATION', 'RESET SESSION AUTHORIZATION', 'SQL_SESSION_RESET'],
    [
      'set_config of session_authorization',
      "SELECT set_config('session_authorization', 'x', false)",
      'SQL_SESSION_RESET',
    ],
    [
      'RESET ALL inside a called function',
      'CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ RESET ALL $$; SELECT f()',
      'SQL_SESSION_RESET',
    ],
    ['LOAD', "LOAD 'auto_explain'", 'SQL_LOAD'],
    ['COPY FROM STDIN', 'COPY t FROM STDIN', 'SQL_COPY_STDIO'],
    ['COPY TO STDOUT', 'COPY t TO STDOUT', 'SQL_COPY_STDIO'],
    [
      'a relation in the gate schema',
      'DELETE FROM gate.ledger WHERE true',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate', 'gate_backup'] },
    ],
    [
      'DROP TABLE in the backup schema',
      'DROP TABLE gate_backup.b1',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate', 'gate_backup'] },
    ],
    [
      'DROP FUNCTION in the gate schema',
      'DROP FUNCTION gate.f()',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate'] },
    ],
    [
      'CREATE FUNCTION in the gate schema (a name list on the statement itself)',
      "CREATE FUNCTION gate.f() RETURNS int LANGUAGE sql AS 'select 1'",
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate'] },
    ],
    ['DROP SCHEMA of the gate', 'DROP SCHEMA gate CASCADE', 'SQL_TOUCHES_GATE', { gateSchemas: ['gate'] }],
    [
      'CREATE SCHEMA of the backup schema',
      'CREATE SCHEMA gate_backup',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate', 'gate_backup'] },
    ],
    [
      'ALTER SCHEMA RENAME of the gate',
      'ALTER SCHEMA gate RENAME TO old',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate'] },
    ],
    [
      'GRANT on the gate schema',
      'GRANT ALL ON ALL TABLES IN SCHEMA gate TO r',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate'] },
    ],
    [
      'moving a table into the gate schema',
      'ALTER TABLE t SET SCHEMA gate',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate'] },
    ],
    [
      'a search_path into the gate schema',
      'SET LOCAL search_path = gate, public',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate'] },
    ],
    [
      'the gate schema inside a DO block',
      'DO $$ BEGIN TRUNCATE gate.ledger; END $$',
      'SQL_TOUCHES_GATE',
      { gateSchemas: ['gate'] },
    ],
    ['COMMIT inside a DO block', 'DO $$ BEGIN COMMIT; END $$', 'SQL_TRANSACTION_CONTROL'],
    ['a dry run of COPY TO PROGRAM', "COPY t TO PROGRAM 'touch /tmp/x'", 'DRY_RUN_NOT_DRY', { dryRun: true }],
    [
      'a dry run of dblink_exec',
      "SELECT dblink_exec('c', 'create table x()')",
      'DRY_RUN_NOT_DRY',
      { dryRun: true },
    ],
    [
      'a dry run of pg_terminate_backend',
      'SELECT pg_terminate_backend(1)',
      'DRY_RUN_NOT_DRY',
      { dryRun: true },
    ],
    ['a dry run of dynamic SQL', "DO $$ BEGIN EXECUTE 'x'; END $$", 'DRY_RUN_NOT_DRY', { dryRun: true }],
  ];
  for (const [what, sql, code, options] of cases) {
    it(`refuses ${what}`, async () => {
      const error = await refusal(sql, options);
      expect(error?.code, sql).toBe(code);
      expect(error?.message).toMatch(/Statement \d|statement \d/);
    });
  }

  it('names the statement and the reason a dry run would not be dry', async () => {
    const error = await refusal("SELECT 1; COPY t FROM PROGRAM 'id'", { dryRun: true });
    expect(error?.message).toMatch(
      /^A dry run would not be dry: statement 2 \(COPY runs an operating-system command\) has effects no rollback undoes/,
    );
  });

  it('says why a lexer setting is refused', async () => {
    const error = await refusal('SET standard_conforming_strings = off');
    expect(error?.message).toContain('changes how Postgres reads the SQL that follows');
  });

  const accepted: Array<[string, string, { dryRun?: boolean; gateSchemas?: string[] }?]> = [
    ['the same statements without a dry run', "COPY t TO PROGRAM 'x'"],
    ['a dry run of ordinary DDL', 'ALTER TABLE t ADD c int', { dryRun: true }],
    ['a schema that only starts like the gate schema', 'DROP TABLE gatekeeper.t', { gateSchemas: ['gate'] }],
    ['a gate schema in another case', 'DROP TABLE "Gate".t', { gateSchemas: ['gate'] }],
    ['a table alias named like the gate schema', 'SELECT gate.id FROM t AS gate', { gateSchemas: ['gate'] }],
    ['SET LOCAL search_path to another schema', 'SET LOCAL search_path = app', { gateSchemas: ['gate'] }],
    ['SET of a timeout (a finding, not a refusal)', 'SET LOCAL lock_timeout = 0'],
  ];
  for (const [what, sql, options] of accepted) {
    it(`accepts ${what}`, async () => {
      expect(await refusal(sql, options)).toBeNull();
    });
  }
});
