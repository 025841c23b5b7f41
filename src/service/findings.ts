import type { ApprovalRequest } from '../approvals/request.js';
import type { Config } from '../config.js';
import { analyseSql, type Analysis } from '../migration/analyse.js';
import type { RelationFacts } from '../migration/catalog.js';
import type { RiskFinding } from '../migration/risk-codes.js';
import { assessRisks, type RiskAssessment } from '../migration/risks.js';
import { NO_SCHEMA_FACTS, type SchemaFacts } from '../migration/schema-facts.js';

/**
 * What a request's statements risk: judged from the parse tree and, at request time, from the live
 * catalog; remembered per request so that status reads do not re-parse. After a restart a request is
 * judged again from its record without the catalog, which assumes the worst where the catalog would
 * have told: the approval file keeps the judgement the human was shown.
 */
export class Findings {
  readonly #config: Config;
  readonly #byId = new Map<string, RiskFinding[]>();
  /** Requests this process judged at request time, with the catalog: their findings are those. */
  readonly #atRequest = new Set<string>();
  /** Catalog facts at request time, kept for the results of this instance's own requests. */
  readonly #impact = new Map<string, readonly RelationFacts[]>();

  constructor(config: Config) {
    this.#config = config;
  }

  /** The judgement of `analysis`, with the target's catalog when it was read (`facts`). */
  assess(analysis: Analysis, facts: SchemaFacts = NO_SCHEMA_FACTS): RiskAssessment {
    const { executor } = this.#config;
    return assessRisks(
      analysis.statements,
      {
        lockTimeoutMs: executor.lock_timeout_ms,
        statementTimeoutMs: executor.statement_timeout_ms,
        lockRetries: executor.lock_retries,
      },
      facts,
    );
  }

  remember(id: string, findings: RiskFinding[], impact: readonly RelationFacts[]): void {
    this.#byId.set(id, findings);
    this.#atRequest.add(id);
    this.#impact.set(id, impact);
  }

  /**
   * The findings this process judged when the request was made (from the command, with the live
   * catalog), or null: kept in memory, they owe nothing to the record on disk.
   */
  judgedAtRequest(id: string): RiskFinding[] | null {
    return this.#atRequest.has(id) ? (this.#byId.get(id) ?? null) : null;
  }

  impactOf(id: string): readonly RelationFacts[] {
    return this.#impact.get(id) ?? [];
  }

  /** Risk findings of a stored request, judged again from its record on first use (without the catalog). */
  async of(request: ApprovalRequest): Promise<RiskFinding[]> {
    let findings = this.#byId.get(request.id);
    if (!findings) {
      findings = this.assess(await analyseSql(request.command.sql)).findings;
      this.#byId.set(request.id, findings);
    }
    return findings;
  }
}
