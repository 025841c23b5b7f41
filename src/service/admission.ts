import { assertVisible } from '../approvals/invisible.js';
import type { MigrationCommand } from '../approvals/request.js';
import type { Config, EnvironmentConfig } from '../config.js';
import { describeError, GateError } from '../errors.js';
import { analyseSql, assertExecutable, type Analysis } from '../migration/analyse.js';
import { RISK_TITLES, type RiskFinding } from '../migration/risk-codes.js';
import { assertDryRunIsDry } from '../migration/risks.js';
import type { Findings } from './findings.js';

/*
 * What the config demands of a migration command, whoever holds it: checked when the agent submits
 * it, and again just before an approved one runs. The request's record lies in the state directory,
 * which an agent running as the server's user can write: a record it wrote itself, or edited outside
 * the hashed command (approvals_required), never passed the first check, so the second one recomputes
 * everything from the command under the config as it is then, and trusts nothing else in the record.
 */

/** The environment's settings, once it is known to exist and to include `database`. */
export function targetEnvironment(config: Config, environment: string, database: string): EnvironmentConfig {
  const settings = config.environments[environment];
  if (!settings) {
    throw new GateError(
      'ENVIRONMENT_UNKNOWN',
      `Environment "${environment}" is not configured. Allowed: ${Object.keys(config.environments).join(', ')}.`,
    );
  }
  if (!settings.databases.includes(database)) {
    throw new GateError(
      'DATABASE_NOT_ALLOWED',
      `Environment "${environment}" does not include database "${database}". Allowed: ${settings.databases.join(', ')}.`,
    );
  }
  return settings;
}

/** The gate's own schemas, which no migration may name: the ledger and the table-copy backups. */
export function gateSchemas(config: Config): string[] {
  return [config.ledger_schema, `${config.ledger_schema}_backup`];
}

/**
 * Refuses what the environment's risk_policy refuses; otherwise says how many approvers the policy
 * requires (two where a finding's policy is two_approvers).
 */
export function policyVerdict(
  environment: string,
  settings: EnvironmentConfig,
  findings: readonly RiskFinding[],
  outcome: string,
): { readonly approvalsRequired: 1 | 2 } {
  const refused = findings.filter((f) => settings.risk_policy[f.code] === 'refuse');
  if (refused.length > 0) {
    throw new GateError(
      'POLICY_REFUSED',
      `The ${environment} policy refuses this migration: ` +
        refused
          .map((f) => `${RISK_TITLES[f.code]} (statement ${f.statement ?? 'all'}): ${f.message}`)
          .join(' ') +
        ` ${outcome}`,
    );
  }
  return {
    approvalsRequired: findings.some((f) => settings.risk_policy[f.code] === 'two_approvers') ? 2 : 1,
  };
}

/**
 * The rollback SQL parses; in a dry run, which rehearses it too, it must be as executable and as dry
 * as the SQL. Returns its analysis (null without rollback SQL).
 */
export async function assertRollbackFits(
  command: Pick<MigrationCommand, 'rollback_sql' | 'dry_run'>,
  options: { readonly gateSchemas: readonly string[]; readonly findings: Findings },
): Promise<Analysis | null> {
  if (command.rollback_sql === null) return null;
  const rollback = await analyseSql(command.rollback_sql).catch((error: unknown) => {
    throw new GateError('ROLLBACK_SQL_INVALID', `rollback_sql: ${describeError(error)}`);
  });
  if (!command.dry_run) return rollback;
  try {
    assertExecutable(rollback, { dryRun: true, gateSchemas: options.gateSchemas });
    assertDryRunIsDry(options.findings.assess(rollback).findings, { dryRun: true });
  } catch (error) {
    if (error instanceof GateError) throw new GateError(error.code, `rollback_sql: ${error.message}`);
    throw error;
  }
  return rollback;
}

/**
 * Just before an approved request runs: its command must still be one the agent could submit now
 * (environment and database, nothing invisible, executable, a dry run that stays dry, nothing the
 * policy refuses), and the decision must have as many approvers as the policy requires now,
 * whatever the record says; an approval made by require_approval (no person) stands only where
 * require_approval still makes it. `findings` are the request-time judgement this process made, or
 * a new one with the live catalog; `analysis` is the command's SQL parsed again. Returns the
 * approvers the policy requires and the rollback SQL's analysis.
 */
export async function readmit(
  config: Config,
  command: MigrationCommand,
  judged: { readonly analysis: Analysis; readonly findings: readonly RiskFinding[] },
  options: {
    readonly findings: Findings;
    /** How many people approved it: none where the environment's require_approval did. */
    readonly approversDecided: 0 | 1 | 2;
  },
): Promise<{ readonly approvalsRequired: 1 | 2; readonly rollback: Analysis | null }> {
  const settings = targetEnvironment(config, command.environment, command.database);
  assertVisible('sql', command.sql);
  if (command.rollback_sql !== null) assertVisible('rollback_sql', command.rollback_sql);
  const schemas = gateSchemas(config);
  assertExecutable(judged.analysis, { dryRun: command.dry_run, gateSchemas: schemas });
  assertDryRunIsDry([...judged.findings], { dryRun: command.dry_run });
  const rollback = await assertRollbackFits(command, { gateSchemas: schemas, findings: options.findings });
  const { approvalsRequired } = policyVerdict(
    command.environment,
    settings,
    judged.findings,
    'Nothing was run.',
  );
  if (options.approversDecided === 0) {
    // Approved by the policy, not a person: the policy must still say so.
    const byPolicy =
      settings.require_approval === 'never' ||
      (settings.require_approval === 'not_for_dry_runs' && command.dry_run);
    if (!byPolicy) {
      throw new GateError(
        'HUMAN_DECISION_REQUIRED',
        `The ${command.environment} environment requires a person's approval for this migration ` +
          `(require_approval: ${settings.require_approval}), and the recorded approval names nobody. Nothing was run.`,
      );
    }
  } else if (approvalsRequired > options.approversDecided) {
    throw new GateError(
      'APPROVERS_TOO_FEW',
      `The ${command.environment} policy requires two approvers for this migration, and one approved it ` +
        "(the server's record of the request said one was enough: it was changed, or the policy was). Nothing was run; submit a new request.",
    );
  }
  return { approvalsRequired, rollback };
}
