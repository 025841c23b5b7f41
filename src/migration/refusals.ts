import {
  list,
  stringConstant,
  stringsOf,
  visitNodes,
  type AnalysedStatement,
  type Node,
} from './parse-tree.js';
import { functionCalls, isCore } from './side-effects.js';

/**
 * Statements the executor cannot run honestly, refused before anything runs: settings that change how
 * the rest of the SQL is read, resets of the gate's own session, LOAD, COPY from or to a data stream the
 * gate does not have, and SQL that names the gate's own schemas (its ledger and backups).
 */

export type RefusalCode =
  'SQL_LEXER_SETTING' | 'SQL_SESSION_RESET' | 'SQL_LOAD' | 'SQL_COPY_STDIO' | 'SQL_TOUCHES_GATE';

export interface Refusal {
  readonly code: RefusalCode;
  /** Completes "Statement N …": what it does and what to do instead. */
  readonly reason: string;
}

/** Settings that change how Postgres reads string literals and bytes of the SQL that follows. */
const LEXER_SETTINGS = new Set([
  'standard_conforming_strings',
  'client_encoding',
  'backslash_quote',
  'escape_string_warning',
]);

function lexerRefusal(name: string): Refusal {
  return {
    code: 'SQL_LEXER_SETTING',
    reason:
      `changes ${name}, which changes how Postgres reads the SQL that follows, so the reviewer and the ` +
      "gate's parser would no longer see what runs. Remove it and resubmit.",
  };
}

const SESSION_AUTHORIZATION: Refusal = {
  code: 'SQL_SESSION_RESET',
  reason:
    'changes the session authorization (the role everything after it runs as). Remove it and resubmit; grant the migration role what it needs instead.',
};

function settingRefusal(name: string): Refusal | null {
  if (LEXER_SETTINGS.has(name)) return lexerRefusal(name);
  if (name === 'session_authorization') return SESSION_AUTHORIZATION;
  return null;
}

/** What the statement does that the gate refuses outright, or null. */
export function refusalOf(statement: AnalysedStatement, gateSchemas: readonly string[]): Refusal | null {
  const { kind, node } = statement;
  if (kind === 'VariableSetStmt') {
    if (node.kind === 'VAR_RESET_ALL') {
      return {
        code: 'SQL_SESSION_RESET',
        reason:
          "runs RESET ALL, which would lift the gate's safety timeouts and every other session setting. Remove it and resubmit.",
      };
    }
    const refusal = typeof node.name === 'string' ? settingRefusal(node.name.toLowerCase()) : null;
    if (refusal) return refusal;
  }
  if (kind === 'DiscardStmt') {
    return {
      code: 'SQL_SESSION_RESET',
      reason:
        "runs DISCARD, which resets the gate's own session (settings, prepared statements, temporary tables) under the executor. Remove it and resubmit.",
    };
  }
  if (kind === 'LoadStmt') {
    return {
      code: 'SQL_LOAD',
      reason:
        'runs LOAD, which loads a shared library into the database server. Install libraries and extensions outside migrations, then resubmit without LOAD.',
    };
  }
  if (kind === 'CopyStmt' && node.is_program !== true && typeof node.filename !== 'string') {
    const from = node.is_from === true;
    return {
      code: 'SQL_COPY_STDIO',
      reason: `runs COPY ${from ? 'FROM STDIN' : 'TO STDOUT'}, but the gate has no data stream to ${from ? 'feed' : 'drain'}. Put the data in INSERT statements${from ? '' : ' (read it with a separate query)'} and resubmit.`,
    };
  }
  for (const call of functionCalls(node)) {
    if (call.name !== 'set_config' || !isCore(call)) continue;
    const setting = stringConstant(call.args[0])?.toLowerCase();
    const refusal = setting === undefined ? null : settingRefusal(setting);
    if (refusal) return refusal;
  }
  const schema = gateSchemaNamed(statement, gateSchemas);
  if (schema !== null) {
    return {
      code: 'SQL_TOUCHES_GATE',
      reason: `names the gate's own schema ${schema}: the gate's ledger and backups are not the migration's to read or change. Remove it and resubmit.`,
    };
  }
  return null;
}

const SCHEMA_OBJECT_KINDS = new Set([
  'DropStmt',
  'GrantStmt',
  'RenameStmt',
  'AlterOwnerStmt',
  'CommentStmt',
  'SecLabelStmt',
]);

/** Splits a search_path value ('app, "ledger"') into schema names. */
function searchPathSchemas(value: string): string[] {
  return value.split(',').map((part) => part.trim().replace(/^"(.*)"$/, '$1'));
}

/**
 * The first of the gate's schemas the statement names: a relation or other object qualified with it,
 * the schema itself (CREATE/DROP/ALTER SCHEMA, GRANT … ON SCHEMA, SET SCHEMA), or a search_path
 * that would resolve unqualified names into it. Exact, case-sensitive: as Postgres compares them.
 */
function gateSchemaNamed(statement: AnalysedStatement, gateSchemas: readonly string[]): string | null {
  if (gateSchemas.length === 0) return null;
  const gate = new Set(gateSchemas);
  for (const relation of statement.relations) {
    const schema = relation.split('.').at(-2);
    if (schema !== undefined && gate.has(schema)) return schema;
  }
  const { kind, node } = statement;
  const schemaObject =
    SCHEMA_OBJECT_KINDS.has(kind) &&
    [node.removeType, node.objtype, node.renameType, node.objectType].includes('OBJECT_SCHEMA');
  const allInSchema = kind === 'GrantStmt' && node.targtype === 'ACL_TARGET_ALL_IN_SCHEMA';
  let found: string | null = null;
  const hit = (name: unknown): void => {
    if (found === null && typeof name === 'string' && gate.has(name)) found = name;
  };
  /** SET search_path: every schema it names, each of which unqualified names may resolve into. */
  const hitSearchPath = (setStatement: Node): void => {
    if (String(setStatement.name).toLowerCase() !== 'search_path') return;
    for (const arg of list(setStatement, 'args')) {
      for (const schema of searchPathSchemas(stringConstant(arg) ?? '')) hit(schema);
    }
  };
  /** Qualified names are string lists: funcname, type names, DROP/GRANT/COMMENT objects. */
  const hitQualifiedNames = (value: Node): void => {
    for (const items of Object.values(value)) {
      if (Array.isArray(items) && items.length >= 2 && stringsOf(items).length === items.length) {
        hit(stringsOf(items)[0]);
      }
    }
  };
  if (kind === 'RenameStmt' && node.renameType === 'OBJECT_SCHEMA') {
    hit(node.subname);
    hit(node.newname);
  }
  hit(node.schemaname);
  hit(node.newschema);
  visitNodes(node, (key, value) => {
    if (found !== null || key === 'ColumnRef') return 'skip';
    hit(value.schemaname);
    hit(value.newschema);
    if (key === 'String' && (schemaObject || allInSchema)) hit(value.sval);
    if (key === 'DefElem' && (value.defname === 'schema' || value.defname === 'schemas')) {
      visitNodes(value, (inner, innerValue) => {
        if (inner === 'String') hit(innerValue.sval);
        return undefined;
      });
    }
    if (key === 'VariableSetStmt') hitSearchPath(value);
    if (key === 'FuncCall' || key === 'funccall') {
      const parts = stringsOf(list(value, 'funcname'));
      if (parts.at(-1) === 'set_config' && stringConstant(list(value, 'args')[0]) === 'search_path') {
        for (const schema of searchPathSchemas(stringConstant(list(value, 'args')[1]) ?? '')) hit(schema);
      }
    }
    hitQualifiedNames(value);
  });
  // The statement's own fields too (CreateFunctionStmt.funcname is a list on the statement itself).
  hitQualifiedNames(node);
  if (kind === 'VariableSetStmt') hitSearchPath(node);
  return found;
}
