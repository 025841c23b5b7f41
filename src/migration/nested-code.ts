import { describeError } from '../errors.js';
import {
  child,
  defElem,
  list,
  loadedParser,
  parseNestedSql,
  statementOfNode,
  stringsOf,
  visitNodes,
  type AnalysedStatement,
} from './parse-tree.js';
import { clip, effect, functionCalls, type SideEffect } from './side-effects.js';

/**
 * Every statement a migration runs, including SQL nested in DO blocks and in functions the migration
 * creates and then calls (or whose triggers it may fire), and the code that runs but cannot be read
 * (dynamic SQL, other languages, bodies that do not parse), which is reported as such, never assumed
 * safe. Findings and refusals are then computed for each statement found here.
 */

/** A statement that runs, with the path that reaches it ([] for a top-level statement). */
export interface StatementSite {
  readonly type: 'statement';
  readonly statement: AnalysedStatement;
  readonly via: readonly string[];
}

/** Code that runs but cannot be read: dynamic SQL, another language, a body that does not parse. */
export interface OpaqueSite {
  readonly type: 'opaque';
  /** 0-based index of the top-level statement that runs it. */
  readonly index: number;
  readonly via: readonly string[];
  readonly effect: SideEffect;
}

export type Site = StatementSite | OpaqueSite;

/** "Inside the DO block, inside function f (created by statement 2): " — or '' at top level. */
export function viaPrefix(via: readonly string[]): string {
  if (via.length === 0) return '';
  const text = via.join(', ');
  return `${text.charAt(0).toUpperCase()}${text.slice(1)}: `;
}

/** Nesting bombs (a DO in a DO in a DO …, functions calling each other) stop here. */
export const MAX_NESTING = 8;
/** Total statements analysed per migration, nested included: a bound on work for hostile input. */
const MAX_SITES = 5000;

interface CreatedFunction {
  /** Lower-case last name part: calls are matched schema-insensitively. */
  readonly key: string;
  readonly shown: string;
  /** 1-based number of the top-level statement that creates it. */
  readonly createdBy: number;
  readonly language: string;
  readonly trigger: 'trigger' | 'event_trigger' | null;
  readonly statement: AnalysedStatement;
}

/** Statements that can fire a trigger (DML, COPY) or run code that can (DO, CALL, SELECT). */
const TRIGGER_FIRING_KINDS = new Set([
  'InsertStmt',
  'UpdateStmt',
  'DeleteStmt',
  'MergeStmt',
  'CopyStmt',
  'DoStmt',
  'CallStmt',
  'SelectStmt',
]);

const DYNAMIC_STATEMENTS: Readonly<Record<string, string>> = {
  PLpgSQL_stmt_dynexecute: 'EXECUTE',
  PLpgSQL_stmt_dynfors: 'FOR ... IN EXECUTE',
  PLpgSQL_stmt_open: 'OPEN ... FOR EXECUTE',
  PLpgSQL_stmt_return_query: 'RETURN QUERY EXECUTE',
};

function dynamicSql(how: string): SideEffect {
  return effect(
    'DYNAMIC_SQL',
    `${how} runs SQL built at run time: its contents cannot be analysed, so it may do anything the migration role can, including what the policy refuses, and the reviewer cannot see it.`,
    'Write the statements out as plain SQL in the migration.',
  );
}

function unanalysed(what: string): SideEffect {
  return effect(
    'UNANALYSED_CODE',
    `${what}: its contents cannot be analysed, so neither the gate nor the reviewer can tell what it does.`,
    'Write the work as plain SQL statements, or as a LANGUAGE plpgsql or sql function.',
  );
}

/** A dollar-quote tag the body does not contain, so the body cannot close the quote early. */
function dollarTag(body: string): string {
  for (let n = 0; ; n += 1) {
    const tag = n === 0 ? '$gate$' : `$gate${n}$`;
    if (!body.includes(tag)) return tag;
  }
}

/** The source libpg-query's PL/pgSQL parser accepts for a DO block body. */
export function doBlockSource(body: string): string {
  const tag = dollarTag(body);
  return `CREATE FUNCTION pg_temp.gate_do() RETURNS void LANGUAGE plpgsql AS ${tag}${body}${tag}`;
}

/**
 * SQL text of a PL/pgSQL expression. Statements (mode 0) are SQL; expressions are wrapped in SELECT;
 * assignments (`target := expr`, modes 3 to 5) become `SELECT target, expr` so calls on either side
 * (a subscript, the value) are seen.
 */
function expressionSql(query: string, parseMode: number): string | null {
  if (parseMode === 0) return query;
  if (parseMode === 1) return null;
  if (parseMode >= 3 && parseMode <= 5) {
    const utf8 = Buffer.from(query, 'utf8');
    let depth = 0;
    for (const token of loadedParser().scanSync(query).tokens) {
      if (token.text === '(' || token.text === '[') depth += 1;
      else if (token.text === ')' || token.text === ']') depth -= 1;
      else if (depth === 0 && (token.text === ':=' || token.text === '=')) {
        const target = utf8.subarray(0, token.start).toString('utf8');
        const value = utf8.subarray(token.end).toString('utf8');
        return `SELECT ${target}, ${value}`;
      }
    }
  }
  return `SELECT ${query}`;
}

/**
 * Every statement the migration runs, in order: each top-level statement, then what it runs itself
 * (its DO block's statements; the bodies of functions created earlier in the migration that it calls,
 * or whose trigger it may fire), and opaque sites for code that cannot be read.
 */
export function executedSites(statements: readonly AnalysedStatement[]): Site[] {
  const sites: Site[] = [];
  const functions = new Map<string, CreatedFunction>();
  const unfiredTriggers = new Map<string, CreatedFunction>();
  let exhausted = false;

  const push = (site: Site): boolean => {
    if (sites.length < MAX_SITES) {
      sites.push(site);
      return true;
    }
    if (!exhausted) {
      exhausted = true;
      const index = site.type === 'statement' ? site.statement.index : site.index;
      sites.push({
        type: 'opaque',
        index,
        via: [],
        effect: unanalysed(
          `The migration nests more than ${MAX_SITES} statements in DO blocks and functions`,
        ),
      });
    }
    return false;
  };

  const opaque = (index: number, via: readonly string[], found: SideEffect): void => {
    push({ type: 'opaque', index, via, effect: found });
  };

  /** What `parse` returns, or null once `what` is reported as code that does not parse. */
  const parsedOrOpaque = <T>(
    parse: () => T,
    index: number,
    via: readonly string[],
    what: string,
  ): T | null => {
    try {
      return parse();
    } catch (error) {
      opaque(index, via, unanalysed(`${what} does not parse (${clip(describeError(error))})`));
      return null;
    }
  };

  /** True (and reported) when the code at `depth` is nested too deep to expand. */
  const tooDeep = (depth: number, index: number, inside: readonly string[]): boolean => {
    if (depth <= MAX_NESTING) return false;
    opaque(index, inside, unanalysed(`The code is nested more than ${MAX_NESTING} levels deep`));
    return true;
  };

  const register = (statement: AnalysedStatement): void => {
    const { node } = statement;
    const parts = stringsOf(list(node, 'funcname'));
    const name = parts.at(-1);
    if (name === undefined) return;
    const options = list(node, 'options');
    const language = child(defElem(options, 'language')?.arg, 'String')?.sval;
    const returns = stringsOf(list(child(node, 'returnType'), 'names'))
      .at(-1)
      ?.toLowerCase();
    const created: CreatedFunction = {
      key: name.toLowerCase(),
      shown: parts.join('.'),
      createdBy: statement.index + 1,
      language: typeof language === 'string' ? language.toLowerCase() : 'sql',
      trigger: returns === 'trigger' || returns === 'event_trigger' ? returns : null,
      statement,
    };
    functions.set(created.key, created);
    if (created.trigger) unfiredTriggers.set(created.key, created);
    else unfiredTriggers.delete(created.key);
    if (created.language === 'c') {
      // Creating a C function loads its shared library into the server (and runs its init code).
      opaque(
        statement.index,
        [],
        unanalysed(
          `Function ${created.shown} is written in C; creating it loads a shared library into the server`,
        ),
      );
    }
  };

  const runPlpgsql = (
    source: string,
    index: number,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
  ): void => {
    const tree: unknown = parsedOrOpaque(
      () => loadedParser().parsePlPgSQLSync(source),
      index,
      via,
      'The PL/pgSQL body',
    );
    if (tree === null) return;
    visitNodes(tree, (key, value) => {
      const how = DYNAMIC_STATEMENTS[key];
      if (
        how !== undefined &&
        (key === 'PLpgSQL_stmt_dynexecute' || key === 'PLpgSQL_stmt_dynfors' || 'dynquery' in value)
      ) {
        opaque(index, via, dynamicSql(how));
        return;
      }
      if (key === 'PLpgSQL_stmt_commit' || key === 'PLpgSQL_stmt_rollback') {
        // Transaction control inside a body: the executor refuses it as it does at top level.
        const text = key === 'PLpgSQL_stmt_commit' ? 'COMMIT' : 'ROLLBACK';
        const statement = statementOfNode(
          { TransactionStmt: { kind: `TRANS_STMT_${text}` } },
          { index, text, offset: 0 },
        );
        if (statement) visit(statement, via, depth, expanded);
        return;
      }
      if (key !== 'PLpgSQL_expr' || typeof value.query !== 'string') return;
      const sql = expressionSql(value.query, typeof value.parseMode === 'number' ? value.parseMode : 2);
      if (sql === null) return;
      const nested = parsedOrOpaque(
        () => parseNestedSql(sql, index),
        index,
        via,
        'An expression in the PL/pgSQL body',
      );
      for (const statement of nested ?? []) visit(statement, via, depth, expanded);
      return undefined;
    });
  };

  const runDo = (
    statement: AnalysedStatement,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
  ): void => {
    const inside = [...via, 'inside the DO block'];
    if (tooDeep(depth, statement.index, inside)) return;
    const args = list(statement.node, 'args');
    const language = child(defElem(args, 'language')?.arg, 'String')?.sval;
    const body = child(defElem(args, 'as')?.arg, 'String')?.sval;
    const lang = typeof language === 'string' ? language.toLowerCase() : 'plpgsql';
    if (lang !== 'plpgsql') {
      opaque(statement.index, inside, unanalysed(`The DO block is written in ${lang}`));
      return;
    }
    runPlpgsql(doBlockSource(typeof body === 'string' ? body : ''), statement.index, inside, depth, expanded);
  };

  const runFunction = (
    fn: CreatedFunction,
    index: number,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
    how: string,
  ): void => {
    const inside = [...via, `inside ${how} ${fn.shown} (created by statement ${fn.createdBy})`];
    if (tooDeep(depth, index, inside)) return;
    if (fn.language === 'plpgsql') {
      // The whole CREATE statement, so parameters, trigger variables and the return type are known.
      runPlpgsql(fn.statement.text, index, inside, depth, expanded);
      return;
    }
    if (fn.language !== 'sql') {
      opaque(index, inside, unanalysed(`Function ${fn.shown} is written in ${fn.language}`));
      return;
    }
    const sqlBody = fn.statement.node.sql_body;
    if (sqlBody !== undefined) {
      const bodies: unknown[] = [];
      visitNodes({ sql_body: sqlBody }, (key, value) => {
        if (key === 'List' || key === 'sql_body') return;
        bodies.push({ [key]: value });
        return 'skip';
      });
      for (const raw of bodies) {
        const statement = statementOfNode(raw, { index, text: '', offset: 0 });
        if (statement) visit(statement, inside, depth, expanded);
      }
      return;
    }
    const as = list(child(defElem(list(fn.statement.node, 'options'), 'as')?.arg, 'List'), 'items');
    const body = stringsOf(as)[0] ?? '';
    const nested = parsedOrOpaque(
      () => parseNestedSql(body, index),
      index,
      inside,
      `The body of ${fn.shown}`,
    );
    for (const statement of nested ?? []) visit(statement, inside, depth, expanded);
  };

  const visit = (
    statement: AnalysedStatement,
    via: readonly string[],
    depth: number,
    expanded: Set<string>,
  ): void => {
    if (!push({ type: 'statement', statement, via })) return;
    if (statement.kind === 'DoStmt') runDo(statement, via, depth + 1, expanded);
    for (const call of functionCalls(statement.node)) {
      const fn = functions.get(call.name);
      // Once per top-level statement: stops recursion and fan-out bombs.
      if (fn === undefined || expanded.has(fn.key)) continue;
      expanded.add(fn.key);
      runFunction(fn, statement.index, via, depth + 1, expanded, 'function');
    }
    if (statement.kind === 'CreateFunctionStmt') register(statement);
  };

  for (const statement of statements) {
    const expanded = new Set<string>();
    visit(statement, [], 0, expanded);
    for (const fn of [...unfiredTriggers.values()]) {
      if (fn.createdBy > statement.index) continue;
      if (fn.trigger === 'trigger' && !TRIGGER_FIRING_KINDS.has(statement.kind)) continue;
      // Reported once, on the first later statement that could fire it.
      unfiredTriggers.delete(fn.key);
      if (expanded.has(fn.key)) continue;
      expanded.add(fn.key);
      runFunction(
        fn,
        statement.index,
        [],
        1,
        expanded,
        `${fn.trigger === 'trigger' ? 'trigger' : 'event trigger'} function`,
      );
    }
  }
  return sites;
}
