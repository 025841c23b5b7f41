import type { Knex } from 'knex';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GATE_MIGRATION_NAMES } from '../../migrations/index.js';
import { prepareLedger } from '../../src/migration/ledger.js';
import { connectTestDatabase, openTestDatabase, uniqueName } from '../helpers/postgres.js';

/*
 * The gate's ledger on the real server, prepared by several gates at once: server instances started
 * together on a new database each create the schema and run the gate's migrations.
 */

let knex: Knex;
const schemas: string[] = [];

beforeAll(async () => {
  knex = await connectTestDatabase();
});

afterAll(async () => {
  for (const schema of schemas) await knex.raw('drop schema if exists ?? cascade', [schema]);
  await knex.destroy();
});

describe('the ledger', () => {
  it('is made once when several gates prepare it at the same moment, and none of them fails', async () => {
    for (let round = 0; round < 8; round += 1) {
      const schema = uniqueName('gate_ledger_race');
      schemas.push(schema);
      // Each gate its own pool, as separate server processes have.
      const gates = Array.from({ length: 4 }, () => openTestDatabase());
      try {
        const settled = await Promise.allSettled(gates.map((gate) => prepareLedger(gate, schema)));
        expect(settled.filter((s) => s.status === 'rejected')).toEqual([]);
      } finally {
        await Promise.all(gates.map((gate) => gate.close()));
      }
      const applied = await knex.withSchema(schema).select('name').from('knex_migrations');
      expect(applied.map((row: { name: string }) => row.name)).toEqual([...GATE_MIGRATION_NAMES]);
    }
  });

  it('repairs the second lock row two gates could once insert, which left knex unable to lock', async () => {
    const schema = uniqueName('gate_ledger_rows');
    schemas.push(schema);
    await knex.raw(`create schema "${schema}"`);
    await knex.raw(
      `create table "${schema}".knex_migrations_lock (index serial primary key, is_locked integer)`,
    );
    await knex.raw(`insert into "${schema}".knex_migrations_lock (is_locked) values (0), (0)`);
    const gate = openTestDatabase();
    try {
      await prepareLedger(gate, schema, { waitMs: 1000 });
    } finally {
      await gate.close();
    }
    expect(await knex.withSchema(schema).from('knex_migrations_lock').select('is_locked')).toEqual([
      { is_locked: 0 },
    ]);
    const applied = await knex.withSchema(schema).select('name').from('knex_migrations');
    expect(applied.map((row: { name: string }) => row.name)).toEqual([...GATE_MIGRATION_NAMES]);
  });

  it('says how to release a migration lock left by a gate that stopped while upgrading it', async () => {
    const schema = uniqueName('gate_ledger_stuck');
    schemas.push(schema);
    const gate = openTestDatabase();
    try {
      await prepareLedger(gate, schema);
      // A gate died in the middle of an upgrade: its lock stays, a migration is still to run.
      const last = GATE_MIGRATION_NAMES.at(-1) ?? '';
      await knex.withSchema(schema).from('knex_migrations').where({ name: last }).delete();
      await knex.withSchema(schema).from('knex_migrations_lock').update({ is_locked: 1 });
      await expect(prepareLedger(gate, schema, { waitMs: 300 })).rejects.toThrow(
        `release it with: UPDATE "${schema}".knex_migrations_lock SET is_locked = 0`,
      );
    } finally {
      await gate.close();
    }
  });
});
