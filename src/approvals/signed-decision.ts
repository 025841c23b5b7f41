import type { DecisionSignature, Decision, ApprovalRequest } from './request.js';
import {
  verifySignature,
  type SignatureCode,
  type SignedDecision,
  type TrustedSigners,
} from './signature.js';

/**
 * In an environment with `allowed_signers`, a decision counts only with a signature per approver:
 * `signature` for decided_by, and `second_signature` for second_approver where two are required. Each
 * signs the canonical message of its own role (src/approvals/signature.ts) for this id, this request
 * hash and this installation. The verified signatures are kept in the decision record, so that the
 * executor verifies them again, against the hash recomputed from the record it is about to run:
 * a decision written straight into the state directory, or copied from another request, never runs.
 */

export interface SignedRole {
  readonly role: DecisionSignature['role'];
  readonly principal: string;
  readonly armored: unknown;
}

export type SignatureCheck =
  | { readonly ok: true; readonly signatures: DecisionSignature[] }
  | { readonly ok: false; readonly code: SignatureCode; readonly message: string };

function signedDecision(
  request: ApprovalRequest,
  installation: string,
  status: 'APPROVED' | 'REJECTED',
  role: SignedRole,
): SignedDecision {
  return {
    id: request.id,
    requestHash: request.request_hash,
    installation,
    status,
    role: role.role,
    principal: role.principal,
  };
}

/** Verifies every approver's signature; the first failure is the answer, naming whose it is. */
export async function checkSignatures(
  request: ApprovalRequest,
  status: 'APPROVED' | 'REJECTED',
  roles: readonly SignedRole[],
  context: { readonly signers: TrustedSigners; readonly installation: string; readonly now: Date },
): Promise<SignatureCheck> {
  const signatures: DecisionSignature[] = [];
  for (const role of roles) {
    const armored = typeof role.armored === 'string' ? role.armored : null;
    const verdict = await verifySignature(
      armored,
      signedDecision(request, context.installation, status, role),
      context.signers,
      context.now,
    );
    if (!verdict.ok) {
      const field = role.role === 'decided_by' ? 'signature' : 'second_signature';
      return {
        ok: false,
        code: verdict.code,
        message: `${field} (for ${role.role} "${role.principal}"): ${verdict.message} Nothing was executed.`,
      };
    }
    signatures.push({
      role: role.role,
      principal: verdict.principal,
      fingerprint: verdict.fingerprint,
      key_type: verdict.keyType,
      armored: armored ?? '',
    });
  }
  return { ok: true, signatures };
}

/** The roles a decision must be signed for. */
export function requiredRoles(
  decision: Pick<Decision, 'status' | 'decided_by' | 'second_approver'>,
  request: ApprovalRequest,
): { role: DecisionSignature['role']; principal: string }[] {
  const roles: { role: DecisionSignature['role']; principal: string }[] = [
    { role: 'decided_by', principal: decision.decided_by ?? '' },
  ];
  if (decision.status === 'APPROVED' && request.approvals_required === 2) {
    roles.push({ role: 'second_approver', principal: decision.second_approver ?? '' });
  }
  return roles;
}

/**
 * Before an approved request runs: its recorded signatures are verified again, for the record as it
 * is now (its hash is recomputed on every read) and at the time the decision was accepted.
 */
export async function recheckRecordedSignatures(
  decision: Decision,
  request: ApprovalRequest,
  context: { readonly signers: TrustedSigners; readonly installation: string },
): Promise<SignatureCheck> {
  if (decision.status !== 'APPROVED' && decision.status !== 'REJECTED') {
    return {
      ok: false,
      code: 'SIGNATURE_MISSING',
      message: `A ${decision.status} decision is not a signed approval.`,
    };
  }
  const roles = requiredRoles(decision, request).map((role) => ({
    ...role,
    armored: decision.signatures.find((s) => s.role === role.role && s.principal === role.principal)?.armored,
  }));
  const decidedAt = new Date(Date.parse(decision.decided_at));
  return checkSignatures(request, decision.status, roles, {
    ...context,
    now: Number.isNaN(decidedAt.getTime()) ? new Date() : decidedAt,
  });
}
