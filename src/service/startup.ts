import { checkTrustedSigners, type TrustedSigners } from '../approvals/signature.js';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { assertTrustAnchors, type Transport } from '../trust-anchors.js';

/**
 * Refuses to start a server with a signed environment whose trust anchors (allowed_signers, revoked
 * keys, the config file) the agent could edit, or whose signers cannot be checked; warns, for each
 * environment without allowed_signers, that its decisions are not authenticated.
 */
export async function assertSigningReady(config: Config, transport: Transport, log: Logger): Promise<void> {
  const anchors: { role: string; path: string }[] = [];
  for (const name of Object.keys(config.environments)) {
    const signers = signersOf(config, name);
    if (signers === null) {
      log.warn(
        { environment: name },
        `decisions in the ${name} environment are not authenticated: anyone who can edit its approval files can approve (set allowed_signers to require SSH signatures)`,
      );
      continue;
    }
    await checkTrustedSigners(signers);
    anchors.push({ role: `allowed_signers of ${name}`, path: signers.allowedSigners });
    if (signers.revokedKeys !== null)
      anchors.push({ role: `revoked_keys of ${name}`, path: signers.revokedKeys });
  }
  if (anchors.length === 0) return;
  if (config.configPath !== null) anchors.push({ role: 'config file', path: config.configPath });
  await assertTrustAnchors(anchors, { transport });
}

/** Says at start, not at the first request, that a database cannot be reached for want of its URL. */
export function warnUnsetConnections(config: Config, env: NodeJS.ProcessEnv, log: Logger): void {
  for (const [name, database] of Object.entries(config.databases)) {
    if (database.client === 'pg' && !env[database.connection_env]) {
      log.warn(
        { database: name, variable: database.connection_env },
        `database ${name} reads its connection string from ${database.connection_env}, which is not set: requests for it will be refused until it is`,
      );
    }
  }
}

/** The trusted signers of a signed environment (allowed_signers), or null where decisions are not signed. */
export function signersOf(config: Config, environment: string): TrustedSigners | null {
  const settings = config.environments[environment];
  if (settings?.allowed_signers === undefined) return null;
  return {
    allowedSigners: settings.allowed_signers,
    revokedKeys: settings.revoked_keys ?? null,
    requireUserPresence: settings.require_user_presence,
  };
}
