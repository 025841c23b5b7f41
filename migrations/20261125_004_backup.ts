import type { Knex } from 'knex';

/** Where backup_before put the backup (pg_dump file or in-database copies), with the execution. */
export function backupMigration(schema: string) {
  return {
    async up(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).alterTable('ledger', (table) => {
        table.jsonb('backup').nullable();
      });
    },
    async down(knex: Knex): Promise<void> {
      await knex.schema.withSchema(schema).alterTable('ledger', (table) => {
        table.dropColumn('backup');
      });
    },
  };
}
