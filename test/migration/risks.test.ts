import { describe, expect, it } from 'vitest';
import { analyseSql } from '../../src/migration/analyse.js';
import {
  escapesTransaction,
  DRY_RUN_REFUSED_CODES,
  OUTSIDE_TRANSACTION_CODES,
  RISK_CODES,
  RISK_TITLES,
  type RiskCode,
} from '../../src/migration/risk-codes.js';
import { assessRisks } from '../../src/migration/risks.js';
import { schemaFacts, tableFacts } from '../helpers/schema-facts.js';

const LIMITS = { lockTimeoutMs: 2000, statementTimeoutMs: 60_000, lockRetries: 5 };

async function codes(sql: string): Promise<RiskCode[]> {
  const { statements } = await analyseSql(sql);
  return assessRisks(statements, LIMITS).findings.map((f) => f.code);
}

async function findings(sql: string) {
  const { statements } = await analyseSql(sql);
  return assessRisks(statements, LIMITS).findings;
}

describe('risk analysis from the parse tree', () => {
  it('flags the reference migration for its index build under the lock the ADD COLUMN still holds', async () => {
    const result = await findings(
      "ALTER TABLE customers\nADD COLUMN loyalty_tier VARCHAR(20) DEFAULT 'bronze'\nNOT NULL;\n\nCREATE INDEX idx_loyalty_tier ON customers(loyalty_tier);",
    );
    // Most severe first.
    expect(result.map((f) => f.code)).toEqual([
      'INDEX_BLOCKS_WRITES',
      'ADD_COLUMN_METADATA_ONLY',
      'LOCK_TIMEOUT_ENFORCED',
    ]);
    const index = result.find((f) => f.code === 'INDEX_BLOCKS_WRITES');
    // Not "SHARE, blocks writes": the ADD COLUMN's ACCESS EXCLUSIVE is held until commit, so reads wait too.
    expect(index).toMatchObject({ statement: 2, severity: 'danger', lock: 'ACCESS EXCLUSIVE on customers' });
    expect(index?.message).toContain('taken by statement 1 and held until the migration commits');
    expect(index?.message).toContain('blocks reads and writes');
    expect(index?.safer).toContain('CREATE INDEX CONCURRENTLY idx_loyalty_tier ON customers');
  });

  it('shows, per table, the strongest lock and the statements it is held through', async () => {
    const { statements } = await analyseSql(
      "ALTER TABLE customers ADD COLUMN tier text DEFAULT 'b'; CREATE INDEX i ON customers (tier); SELECT 1",
    );
    expect(assessRisks(statements, LIMITS).locks).toEqual([
      {
        relation: 'customers',
        mode: 'ACCESS EXCLUSIVE',
        from: 1,
        to: 3,
        blocks: 'reads and writes',
        longDuring: [2],
      },
    ]);
  });

  const cases: Array<[string, string, RiskCode]> = [
    [
      'an index built concurrently (writes continue, invalid index on failure)',
      'CREATE INDEX CONCURRENTLY i ON t(c)',
      'CONCURRENT_INDEX',
    ],
    [
      'CONCURRENTLY mixed with other statements (not atomic)',
      'ALTER TABLE t ADD c int; CREATE INDEX CONCURRENTLY i ON t(c)',
      'NON_ATOMIC_MIGRATION',
    ],
    [
      'ADD COLUMN with a volatile default (rewrite)',
      'ALTER TABLE t ADD COLUMN u uuid DEFAULT gen_random_uuid()',
      'ADD_COLUMN_REWRITE',
    ],
    ['ADD COLUMN of a serial type (rewrite)', 'ALTER TABLE t ADD COLUMN n bigserial', 'ADD_COLUMN_REWRITE'],
    [
      'ADD COLUMN with a constant default (metadata only)',
      "ALTER TABLE t ADD COLUMN s text DEFAULT 'x'",
      'ADD_COLUMN_METADATA_ONLY',
    ],
    [
      'ADD COLUMN with now() (stable, metadata only)',
      'ALTER TABLE t ADD COLUMN s timestamptz DEFAULT now()',
      'ADD_COLUMN_METADATA_ONLY',
    ],
    [
      'ADD COLUMN NOT NULL without default',
      'ALTER TABLE t ADD COLUMN s int NOT NULL',
      'ADD_COLUMN_NOT_NULL_NO_DEFAULT',
    ],
    ['SET NOT NULL (full scan)', 'ALTER TABLE t ALTER COLUMN c SET NOT NULL', 'SET_NOT_NULL_SCAN'],
    ['ALTER COLUMN TYPE (rewrite)', 'ALTER TABLE t ALTER COLUMN c TYPE bigint', 'COLUMN_TYPE_REWRITE'],
    [
      'a FOREIGN KEY without NOT VALID',
      'ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES users(id)',
      'CONSTRAINT_VALIDATION_SCAN',
    ],
    [
      'a CHECK without NOT VALID',
      'ALTER TABLE t ADD CONSTRAINT c CHECK (n > 0)',
      'CONSTRAINT_VALIDATION_SCAN',
    ],
    [
      'a PRIMARY KEY built under ACCESS EXCLUSIVE',
      'ALTER TABLE t ADD PRIMARY KEY (id)',
      'UNIQUE_INDEX_UNDER_EXCLUSIVE_LOCK',
    ],
    ['DROP TABLE', 'DROP TABLE t', 'DROP_TABLE'],
    ['DROP COLUMN', 'ALTER TABLE t DROP COLUMN c', 'DROP_COLUMN'],
    ['RENAME of a column', 'ALTER TABLE t RENAME COLUMN a TO b', 'RENAME'],
    ['RENAME of a table', 'ALTER TABLE t RENAME TO u', 'RENAME'],
    ['TRUNCATE', 'TRUNCATE t', 'TRUNCATE'],
    ['UPDATE without WHERE', 'UPDATE t SET c = 1', 'UPDATE_WITHOUT_WHERE'],
    ['DELETE without WHERE', 'DELETE FROM t', 'DELETE_WITHOUT_WHERE'],
    ['SQL that overrides lock_timeout', 'SET lock_timeout = 0; ALTER TABLE t ADD c int', 'TIMEOUT_OVERRIDE'],
    [
      'no lock_timeout of its own: the executor enforces one',
      'ALTER TABLE t ADD c int DEFAULT 0',
      'LOCK_TIMEOUT_ENFORCED',
    ],
  ];
  for (const [what, sql, code] of cases) {
    it(`finds ${what}`, async () => {
      expect(await codes(sql)).toContain(code);
    });
  }

  it('does not flag what is safe', async () => {
    expect(
      await codes('ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (u) REFERENCES users(id) NOT VALID'),
    ).toEqual(['LOCK_TIMEOUT_ENFORCED']);
    const validate = await findings('ALTER TABLE t VALIDATE CONSTRAINT f');
    expect(validate.map((f) => [f.code, f.severity])).toEqual([['CONSTRAINT_VALIDATION_SCAN', 'info']]);
    expect(validate[0]?.message).toContain('SHARE UPDATE EXCLUSIVE on t lets reads and writes continue');
    expect(await codes('UPDATE t SET c = 1 WHERE id < 1000')).toEqual([]);
    expect(await codes('SELECT 1')).toEqual([]);
  });

  it('does not flag work on a table created earlier in the same migration', async () => {
    expect(
      await codes(
        'CREATE TABLE fresh (id int); CREATE INDEX i ON fresh(id); ALTER TABLE fresh ALTER COLUMN id SET NOT NULL',
      ),
    ).toEqual(['LOCK_TIMEOUT_ENFORCED']);
  });

  it('gives every finding code a title, and says which escape the transaction', () => {
    for (const code of RISK_CODES) expect(RISK_TITLES[code], code).toBeTruthy();
    expect(escapesTransaction({ code: 'COPY_PROGRAM' })).toBe(true);
    expect(escapesTransaction({ code: 'DROP_TABLE' })).toBe(false);
    expect(escapesTransaction({ code: 'TIMEOUT_OVERRIDE' })).toBe(false);
    // Postgres rolls role changes back: a failed migration did not leave them behind.
    expect(escapesTransaction({ code: 'ROLE_DDL' })).toBe(false);
    expect(OUTSIDE_TRANSACTION_CODES.size).toBe(11);
    expect([...DRY_RUN_REFUSED_CODES].sort()).toEqual([...OUTSIDE_TRANSACTION_CODES, 'ROLE_DDL'].sort());
  });

  it('attributes findings inside a DO block to the DO statement, with a prefix', async () => {
    const result = await findings('UPDATE t SET c = 1 WHERE id = 1; DO $$ BEGIN TRUNCATE t; END $$');
    expect(result.find((f) => f.code === 'TRUNCATE')).toMatchObject({
      statement: 2,
      message: 'Inside the DO block: TRUNCATE deletes every row of t.',
    });
  });
});

describe('findings that need the live catalog', () => {
  it('flags a write to a relation the catalog says is a foreign table, and only then', async () => {
    const { statements } = await analyseSql(
      "INSERT INTO remote_orders VALUES (1); UPDATE orders SET x = 1 WHERE id = 1; COPY remote_orders FROM '/dev/null'",
    );
    const catalog = schemaFacts([tableFacts('remote_orders', { kind: 'f' }), tableFacts('orders')]);
    const foreign = assessRisks(statements, LIMITS, catalog).findings.filter(
      (f) => f.code === 'FOREIGN_TABLE_WRITE',
    );
    expect(foreign.map((f) => f.statement)).toEqual([1, 3]);
    expect(escapesTransaction(foreign[0] ?? { code: 'DROP_TABLE' })).toBe(true);
    expect(assessRisks(statements, LIMITS).findings.some((f) => f.code === 'FOREIGN_TABLE_WRITE')).toBe(
      false,
    );
  });
});

describe('locks held across the transaction', () => {
  it('flags a lock on one table held while a later statement works on another', async () => {
    const { statements } = await analyseSql(
      "ALTER TABLE accounts ADD COLUMN tier text; UPDATE orders SET note = 'x'",
    );
    const held = assessRisks(statements, LIMITS).findings.find((f) => f.code === 'LOCK_HELD_LONG');
    expect(held).toMatchObject({ statement: 2, severity: 'danger', lock: 'ACCESS EXCLUSIVE on accounts' });
    expect(held?.message).toContain('accounts stays locked ACCESS EXCLUSIVE (taken by statement 1)');
  });

  it('holds nothing across statements that commit one by one', async () => {
    const { statements } = await analyseSql(
      "ALTER TABLE accounts ADD COLUMN tier text; CREATE INDEX CONCURRENTLY i ON orders (note); UPDATE orders SET note = 'x'",
    );
    const { findings, locks } = assessRisks(statements, LIMITS);
    expect(findings.map((f) => f.code)).not.toContain('LOCK_HELD_LONG');
    expect(locks.find((lock) => lock.relation === 'accounts')).toMatchObject({ from: 1, to: 1 });
  });

  it('judges a table known to be empty as instant, and one the migration created as nothing at all', async () => {
    const { statements } = await analyseSql(
      'CREATE INDEX i ON accounts (email); CREATE TABLE fresh (id int); CREATE INDEX j ON fresh (id)',
    );
    const catalog = schemaFacts([tableFacts('accounts', { empty: true })]);
    const { findings } = assessRisks(statements, LIMITS, catalog);
    expect(
      findings.filter((f) => f.code === 'INDEX_BLOCKS_WRITES').map((f) => [f.statement, f.severity]),
    ).toEqual([[1, 'info']]);
  });
});

describe('statements only the catalog shows Postgres will refuse in a transaction', () => {
  it('warns that CLUSTER or REINDEX TABLE of a partitioned table fails in the migration transaction', async () => {
    const catalog = schemaFacts([
      tableFacts('events', { kind: 'p', partitions: ['events_2024'] }),
      tableFacts('orders'),
    ]);
    for (const sql of ['CLUSTER events USING events_pkey', 'REINDEX TABLE events']) {
      const { statements } = await analyseSql(sql);
      expect(
        assessRisks(statements, LIMITS, catalog).findings.map((f) => [f.code, f.severity]),
        sql,
      ).toContainEqual(['REFUSED_IN_TRANSACTION', 'danger']);
    }
    const { statements } = await analyseSql('REINDEX TABLE orders');
    expect(assessRisks(statements, LIMITS, catalog).findings.map((f) => f.code)).not.toContain(
      'REFUSED_IN_TRANSACTION',
    );
  });
});

describe('what the transaction undoes of a safer pattern', () => {
  it('says NOT VALID bought nothing when the VALIDATE is in the same transaction', async () => {
    const { statements } = await analyseSql(
      'ALTER TABLE orders ADD CONSTRAINT c CHECK (amount > 0) NOT VALID; ALTER TABLE orders VALIDATE CONSTRAINT c',
    );
    const validate = assessRisks(statements, LIMITS).findings.find(
      (f) => f.code === 'CONSTRAINT_VALIDATION_SCAN',
    );
    expect(validate).toMatchObject({ statement: 2, severity: 'danger', lock: 'ACCESS EXCLUSIVE on orders' });
    expect(validate?.message).toContain('NOT VALID bought nothing');
  });

  it('says a backfill in the same transaction as the ALTER keeps reads waiting for the whole update', async () => {
    const { statements } = await analyseSql(
      "ALTER TABLE orders ADD COLUMN region text; UPDATE orders SET region = 'eu'",
    );
    const backfill = assessRisks(statements, LIMITS).findings.find((f) => f.code === 'UPDATE_WITHOUT_WHERE');
    expect(backfill?.message).toContain('ACCESS EXCLUSIVE on orders, taken by statement 1');
    expect(backfill?.message).toContain('blocks reads and writes for as long as it updates the table');
    const alone = await analyseSql("UPDATE orders SET region = 'eu'");
    expect(assessRisks(alone.statements, LIMITS).findings[0]?.message).not.toContain(
      'lets reads and writes continue',
    );
  });
});

describe('what an empty table spares', () => {
  it('spares the cost of a lock, never a DELETE of every row', async () => {
    const catalog = schemaFacts([tableFacts('accounts', { empty: true })]);
    const { statements } = await analyseSql('DELETE FROM accounts');
    expect(assessRisks(statements, LIMITS, catalog).findings.map((f) => [f.code, f.severity])).toContainEqual(
      ['DELETE_WITHOUT_WHERE', 'danger'],
    );
  });
});
