"""Import a ``neuronpedia-export`` into a real Neuronpedia database and count what it stored.

    python bench/neuronpedia_import.py --neuronpedia PATH [--store assets/store] [--layers 9]
        [--work DIR] [--creator-id ID] [--public-activations-user-ids IDS]
        [--explanation-type NAME] [--explanation-model NAME] [--config DIR] [--no-pgvector]
        [--keep] [--skip-import]

Run by hand, not in CI. ``PATH`` is a copy of https://github.com/hijohnnylin/neuronpedia: a work
tree, or a git directory read at ``--commit`` (default ebb8426f, the commit this was written
against). Needs PostgreSQL's server binaries (Debian: ``apt-get install postgresql``) and the
pgvector extension for them (their first migration creates it; Debian bookworm has no package,
see docs/neuronpedia.md; ``--no-pgvector`` turns their two ``vector(256)`` columns into ``real[]``
instead, a change to their schema that the output says).

1. Explanations: unless ``--explanations FILE``, one per feature of ``--layers``, the store's
   automatic description as the text, method ``max-activating-examples``; three features of four
   by ``gpt-4o-mini`` (an explainer model Neuronpedia registers), the fourth by ``gemma-3-270m``
   (one it does not), so the export's skip-with-count is exercised.
2. Export: :func:`precompute.explain.neuronpedia.export_store` to ``WORK/export``.
3. Database: a Postgres cluster in ``WORK/pg`` (initdb; as root, run as the ``postgres`` user),
   listening on 127.0.0.1 and a unix socket in that folder only. Their Prisma migrations
   (``apps/webapp/prisma/migrations/*/migration.sql``, in name order, one transaction each: what
   ``prisma migrate deploy`` does) applied with psql.
4. Seed: the two users their ``prisma/seed.ts`` upserts (the bot user, the default creator, and
   the anonymous inference-search user), checked to be still in that file.
5. Config: their import route first upserts the rows of ``v1/config/explanation_type.jsonl`` and
   ``explanation_model_type.jsonl`` from their datasets bucket (``importConfigFromS3`` in
   ``lib/db/import.ts``). With ``--config DIR`` (those files, downloaded) those rows; else, with no
   network here, one row per name their repository names (``VALID_EXPLAINER_TYPE_NAMES`` and
   ``VALID_EXPLAINER_MODEL_NAMES`` of ``batch-autointerp.py``, the types of
   ``app/api/explanation/generate/route.tsx``, ``EXPLANATIONTYPE_HUMAN``), read from PATH.
6. Import: a faithful runner of their ``app/api/admin/import/route.ts`` (GET, explanations=true)
   and ``lib/db/import.ts`` at that commit, over ``WORK/export`` as the bucket ``v1/``. It issues
   the statements they issue: for release/model/sourceset/source, Prisma's ``findUnique`` then
   ``create`` with the line's fields (here ``SELECT`` then ``INSERT`` of those fields; a field the
   table lacks fails, as Prisma's validation does; the release's failure is logged and skipped,
   the others abort, as in the route); for features, activations and explanations their
   ``importJsonlString`` verbatim: ``\\u0000`` replaced, activation lines re-serialised with
   ``zIndices`` split, the columns of the first line looked up in ``information_schema`` with
   their query, then their ``INSERT ... SELECT ... FROM jsonb_to_recordset($1::jsonb) ... ON
   CONFLICT DO NOTHING`` in chunks of 65,000 lines, one file per call (explanations gathered
   into batches of 10,000), files in the bucket's key order. The differences: psql sessions
   instead of one pooled ``pg`` client, the JSON array sent as a dollar-quoted literal to a
   prepared statement instead of a bound parameter, no HNSW prewarm. The runner checks that
   their import.ts and route.ts at PATH still hold those statements and sizes.
7. Counts: rows per table for the exported model, and what a feature page shows
   (``getNeuronOptimized`` in ``lib/db/neuron.ts``): activations whose ``creatorId`` is in
   ``PUBLIC_ACTIVATIONS_USER_IDS`` (``--public-activations-user-ids``, default theirs of
   ``lib/env.ts``), or the feature's creator when it has a vector; all its explanations.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from local_postgres import Failed, Postgres

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

COMMIT = "ebb8426fc550ad5d1f76d52c271a624af3c08a57"
WEBAPP = "apps/webapp"
# What the runner reproduces, as it reads in their files (checked before it runs).
THEIR_STATEMENTS = {
    f"{WEBAPP}/lib/db/import.ts": (
        "jsonlData = jsonlData.replaceAll('\\\\u0000', ' ');",
        "const availableColumns = Object.keys(JSON.parse(firstLine));",
        "SELECT ${columnList} FROM jsonb_to_recordset($1::jsonb) as t(${columnDefs})",
        "ON CONFLICT DO NOTHING",
        "const chunkSize = 65000;",
        "SET work_mem = '${WORK_MEM}'",
        "const WORK_MEM = '2GB';",
    ),
    f"{WEBAPP}/app/api/admin/import/route.ts": (
        "const path = `${DATASET_BASE_PATH}${modelId}/${sourceId}`;",
        "await importJsonlString('Neuron', featuresJsonlString);",
        "await importJsonlString('Activation', activationsJsonlString);",
        "const batchSize = 10000;",
        "await importJsonlString('Explanation', batchJsonlString);",
        "getFilesInPath(`${path}/features`, '.jsonl.gz')",
        "getFilesInPath(`${path}/activations`, '.jsonl.gz', false)",
        "getFilesInPath(`${path}/explanations/`, '.jsonl.gz')",
    ),
}
# Their importJsonlString's column query (their text, less trailing spaces).
COLUMN_QUERY = """
      SELECT
        column_name,
        CASE
          WHEN data_type = 'ARRAY' THEN
            udt_name::regtype::text || '[]'
          WHEN data_type = 'USER-DEFINED' THEN (
            SELECT t.typname::text
            FROM pg_type t
            WHERE t.typname = c.udt_name
          )
          ELSE
            data_type
        END as data_type
      FROM information_schema.columns c
      WHERE table_name = $1
        AND column_name = ANY($2)
      ORDER BY ordinal_position;
    """
CHUNK = 65000  # lines per INSERT (import.ts)
EXPLANATION_BATCH = 10000  # explanations per importJsonlString call (route.ts)
LIST_MAX = 1000  # keys one ListObjectsV2 answers; their getFilesInPath does not page
# prisma/seed.ts: the users it upserts, (id, name, admin, emailUnsubscribeAll).
SEED_USERS = (
    ("clkht01d40000jv08hvalcvly", "bot", True, True),
    ("cljgamm90000076zdchicy6zj", "inferenceactivation", False, None),
)
# lib/env.ts: PUBLIC_ACTIVATIONS_USER_IDS when the variable is not set.
PUBLIC_DEFAULT = "cljj57d3c000076ei38vwnv35,clkht01d40000jv08hvalcvly"
TABLES = (
    "SourceRelease", "Model", "SourceSet", "Source", "Neuron", "Activation", "Explanation",
)  # fmt: skip


# -- their repository ----------------------------------------------------------------------------


class Repo:
    """Their files: from a work tree as they are, or from a git directory at ``commit``."""

    def __init__(self, path: Path, commit: str) -> None:
        self.path = path
        self.tree = (path / WEBAPP).is_dir()
        self.commit = commit
        if not self.tree and self._git("rev-parse", "--verify", f"{commit}^{{commit}}") is None:
            raise SystemExit(f"{path}: neither a Neuronpedia work tree nor a git dir with {commit}")

    def _git(self, *args: str) -> str | None:
        r = subprocess.run(
            ["git", f"--git-dir={self.path}", *args], capture_output=True, text=True, check=False
        )
        return r.stdout if r.returncode == 0 else None

    def revision(self) -> str:
        if self.tree:
            r = subprocess.run(
                ["git", "-C", str(self.path), "rev-parse", "HEAD"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            return r.stdout.strip() if r.returncode == 0 else "a work tree (no git)"
        return (self._git("rev-parse", self.commit) or "").strip()

    def read(self, rel: str) -> str:
        if self.tree:
            return (self.path / rel).read_text(encoding="utf-8")
        text = self._git("show", f"{self.commit}:{rel}")
        if text is None:
            raise SystemExit(f"{rel} is not in {self.path} at {self.commit}")
        return text

    def migrations(self) -> list[str]:
        rel = f"{WEBAPP}/prisma/migrations"
        if self.tree:
            names = [p.name for p in (self.path / rel).iterdir() if p.is_dir()]
        else:
            names = (self._git("ls-tree", "--name-only", f"{self.commit}:{rel}") or "").split()
        return [f"{rel}/{n}/migration.sql" for n in sorted(names) if n[:1].isdigit()]

    def check_statements(self) -> None:
        for rel, needles in THEIR_STATEMENTS.items():
            text = self.read(rel)
            gone = [n for n in needles if n not in text]
            if gone:
                raise SystemExit(
                    f"{rel} no longer holds {gone[0]!r}: this runner reproduces their import at "
                    f"{COMMIT[:8]}; pass --commit {COMMIT[:8]} or update the runner"
                )
        seed = self.read(f"{WEBAPP}/prisma/seed.ts")
        for user_id, *_ in SEED_USERS:
            if f"id: '{user_id}'" not in seed:
                raise SystemExit(f"their prisma/seed.ts no longer creates user {user_id}")

    def config_names(self) -> tuple[list[str], list[str]]:
        """(explanation types, explainer models) their repository names."""
        script = self.read("utils/neuronpedia-utils/neuronpedia_utils/batch-autointerp.py")
        found: dict[str, list[str]] = {}
        for node in ast.walk(ast.parse(script)):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        found[target.id] = [ast.literal_eval(x) for x in node.value.elts]
        types = list(found["VALID_EXPLAINER_TYPE_NAMES"])
        route = self.read(f"{WEBAPP}/app/api/explanation/generate/route.tsx")
        types += re.findall(r"explanationType\.name === '([^']+)'", route)
        auto = self.read(f"{WEBAPP}/lib/utils/autointerp.ts")
        types += re.findall(r"EXPLANATIONTYPE_HUMAN = '([^']+)'", auto)
        return sorted(set(types)), sorted(set(found["VALID_EXPLAINER_MODEL_NAMES"]))


# -- Postgres ------------------------------------------------------------------------------------


def _literal(text: str) -> str:
    """``text`` as a dollar-quoted SQL literal (a tag it does not contain)."""
    tag = "np"
    while f"${tag}$" in text:
        tag = "np" + secrets.token_hex(4)
    return f"${tag}${text}${tag}$"


def _array(items: list[str]) -> str:
    return "ARRAY[" + ",".join(_literal(x) for x in items) + "]::text[]"


# -- their import, step by step ------------------------------------------------------------------


def _no_nan(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (JSON.parse refuses it)")


def _parse(line: str) -> Any:
    return json.loads(line, parse_constant=_no_nan)


def _js(value: Any) -> Any:
    """``value`` with numbers as JSON.stringify writes them (1.0 -> 1)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, list):
        return [_js(x) for x in value]
    if isinstance(value, dict):
        return {k: _js(x) for k, x in value.items()}
    return value


def _stringify(value: Any) -> str:
    return json.dumps(_js(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _normalize_activation(line: str) -> str:
    """Their normalizeActivationJsonlLine: ``zIndices`` [[k...], [q...]] -> zKIndices/zQIndices."""
    parsed = _parse(line)
    z = parsed.get("zIndices")

    def numbers(x: Any) -> bool:
        return isinstance(x, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in x
        )

    if isinstance(z, list):
        k = z[0] if len(z) > 0 else None
        q = z[1] if len(z) > 1 else None
        if numbers(k):
            parsed["zKIndices"] = k
        if numbers(q):
            parsed["zQIndices"] = q
    return _stringify(parsed)


def import_jsonl_string(pg: Postgres, table: str, data: str) -> None:
    """Their importJsonlString(tableName, jsonlData)."""
    data = data.replace("\\u0000", " ")
    if table == "Activation":
        lines = [x for x in data.strip().split("\n") if x.strip()]
        data = "\n".join(_normalize_activation(x) for x in lines)
    try:
        first = data.strip().split("\n")[0]
        available = list(_parse(first).keys())
    except ValueError as e:
        raise Failed(f"{table}: JSON.parse of the first line failed ({e})") from None
    sql = COLUMN_QUERY.replace("$1", _literal(table)).replace("$2", _array(available))
    columns = pg.rows(sql.strip().rstrip(";"))
    defs = ", ".join(f'"{c["column_name"]}" {c["data_type"]}' for c in columns)
    names = ", ".join(f'"{c["column_name"]}"' for c in columns)
    query = f"""
      INSERT INTO "{table}" ({names})
      SELECT {names} FROM jsonb_to_recordset($1::jsonb) as t({defs})
      ON CONFLICT DO NOTHING
    """
    lines = data.strip().split("\n")
    script = ["SET work_mem = '2GB';", f"PREPARE import_chunk AS {query};"]
    for i in range(0, len(lines), CHUNK):
        script.append(
            f"EXECUTE import_chunk({_literal('[' + ','.join(lines[i : i + CHUNK]) + ']')});"
        )
    pg.psql("\n".join(script))


class Bucket:
    """A local folder as their datasets bucket: key ``v1/<rel>`` is ``root/<rel>``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def keys(self, prefix: str) -> list[str]:
        """ListObjectsV2(Prefix): matching keys in byte order, the first 1,000."""
        all_keys = sorted(
            "v1/" + p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )
        found = [k for k in all_keys if k.startswith(prefix)]
        if len(found) > LIST_MAX:
            print(f"  note: {len(found):,} keys under {prefix}; their listing sees the first 1,000")
        return found[:LIST_MAX]

    def files(self, path: str, suffix: str, subdirectories: bool = True) -> list[str]:
        """Their getFilesInPath."""
        out = []
        for key in self.keys(path):
            rel = key[len(path) :][1:]
            if not subdirectories and "/" in rel:
                continue
            if key.endswith(suffix):
                out.append(key)
        return out

    def _path(self, key: str) -> Path:
        return self.root / key.removeprefix("v1/")

    def gunzip(self, key: str) -> str:
        return gzip.decompress(self._path(key).read_bytes()).decode("utf-8")

    def lines(self, key: str) -> list[dict[str, Any]]:
        """Their downloadFileJsonlParsedLines (a missing key fails, as S3's GetObject does)."""
        path = self._path(key)
        if not path.is_file():
            raise Failed(f"NoSuchKey: {key}")
        text = path.read_text(encoding="utf-8")
        return [_parse(x) for x in text.split("\n") if x]


def _create(pg: Postgres, table: str, data: dict[str, Any]) -> None:
    """Prisma's ``create({data})``: the given fields, the rest the table's defaults."""
    columns = {r["column_name"] for r in pg.rows(
        "SELECT column_name FROM information_schema.columns "
        f"WHERE table_name = {_literal(table)}"
    )}  # fmt: skip
    unknown = [k for k in data if k not in columns]
    if unknown:
        raise Failed(f"Prisma {table}.create: Unknown argument `{unknown[0]}`")
    names = ", ".join(f'"{k}"' for k in data)
    pg.psql(
        f'INSERT INTO "{table}" ({names}) SELECT {names} '
        f'FROM json_populate_record(NULL::"{table}", {_literal(json.dumps(data))})'
    )


def _exists(pg: Postgres, table: str, where: dict[str, Any]) -> bool:
    cond = " AND ".join(f'"{k}" = {_literal(str(v))}' for k, v in where.items())
    return bool(pg.rows(f'SELECT 1 FROM "{table}" WHERE {cond}'))


def run_import(pg: Postgres, bucket: Bucket, model_id: str, source_id: str) -> Iterator[str]:
    """Their import route for one source (explanations=true); yields what it logs, raises
    :class:`Failed` where it stops."""
    path = f"v1/{model_id}/{source_id}"
    try:
        for line in bucket.lines(f"{path}/release.jsonl"):
            if not _exists(pg, "SourceRelease", {"name": line["name"]}):
                _create(pg, "SourceRelease", line)
    except (Failed, KeyError) as e:  # the route logs this one and goes on
        yield f"Error importing release: {e}"
    for line in bucket.lines(f"{path}/model.jsonl"):
        if not _exists(pg, "Model", {"id": line["id"]}):
            _create(pg, "Model", line)
    for line in bucket.lines(f"{path}/sourceset.jsonl"):
        if not _exists(pg, "SourceSet", {"modelId": model_id, "name": line["name"]}):
            _create(pg, "SourceSet", {**line, "urls": line.get("urls") or []})
    for line in bucket.lines(f"{path}/source.jsonl"):
        if not _exists(pg, "Source", {"modelId": model_id, "id": line["id"]}):
            row = dict(line)
            if not row.get("inferenceHosts"):
                row.pop("inferenceHosts", None)  # undefined: the column's default
            _create(pg, "Source", row)
    for name in ("inference_hosts.jsonl", "inference_hosts_on_source.jsonl"):
        if not bucket._path(f"{path}/{name}").is_file():
            yield f"Error importing {name}: NoSuchKey (logged by the route, which goes on)"
    for key in bucket.files(f"{path}/features", ".jsonl.gz"):
        yield f"Importing features from {key}"
        import_jsonl_string(pg, "Neuron", bucket.gunzip(key))
    for key in bucket.files(f"{path}/activations", ".jsonl.gz", subdirectories=False):
        t = time.perf_counter()
        import_jsonl_string(pg, "Activation", bucket.gunzip(key))
        yield f"Importing activations from {key} ({time.perf_counter() - t:.1f} s)"
    pending: list[str] = []
    for key in bucket.files(f"{path}/explanations/", ".jsonl.gz"):
        yield f"Importing explanations from {key}"
        for line in bucket.gunzip(key).strip().split("\n"):
            if line.strip():
                pending.append(line)
            if len(pending) >= EXPLANATION_BATCH:
                import_jsonl_string(pg, "Explanation", "\n".join(pending))
                pending = []
    if pending:
        import_jsonl_string(pg, "Explanation", "\n".join(pending))
        yield f"Imported final batch of {len(pending)} lines"


# -- set-up ----------------------------------------------------------------------------------------


def migrate(pg: Postgres, repo: Repo, pgvector: bool) -> int:
    files = repo.migrations()
    for rel in files:
        sql = repo.read(rel)
        if not pgvector:
            sql = sql.replace('CREATE EXTENSION IF NOT EXISTS "vector";', "")
            sql = re.sub(r"\bvector\(\d+\)", "real[]", sql)
        try:
            pg.psql(sql, single=True)
        except Failed as e:
            hint = ""
            if "vector" in str(e):
                hint = " (pgvector is not installed for this server: see --no-pgvector)"
            raise SystemExit(f"migration {rel} failed: {e}{hint}") from None
    return len(files)


def seed(pg: Postgres) -> None:
    """The users their prisma/seed.ts upserts (``update: {}``: an existing row is kept)."""
    for user_id, name, admin, unsubscribe_all in SEED_USERS:
        row: dict[str, Any] = {
            "id": user_id, "name": name, "bot": True, "admin": admin,
            "emailUnsubscribeCode": secrets.token_urlsafe(24)[:32],
            "emailNewsletterNotification": False,
        }  # fmt: skip
        if unsubscribe_all is not None:
            row["emailUnsubscribeAll"] = unsubscribe_all
        if not _exists(pg, "User", {"id": user_id}):
            _create(pg, "User", row)


def load_config(pg: Postgres, repo: Repo, config: Path | None) -> tuple[int, int]:
    """Their importConfigFromS3 for the two tables explanations point at (upserts by name)."""
    if config is not None:
        rows = {
            table: [_parse(x) for x in (config / name).read_text().split("\n") if x]
            for table, name in (
                ("ExplanationModelType", "explanation_model_type.jsonl"),
                ("ExplanationType", "explanation_type.jsonl"),
            )
        }
    else:
        types, models = repo.config_names()
        bot = SEED_USERS[0][0]
        rows = {
            "ExplanationModelType": [
                {"name": m, "displayName": m, "description": "", "creatorName": "neuronpedia"}
                for m in models
            ],
            "ExplanationType": [
                {
                    "name": t,
                    "displayName": t,
                    "description": "",
                    "creatorName": "neuronpedia",
                    "creatorId": bot,
                }
                for t in types
            ],
        }
    for table, lines in rows.items():
        for line in lines:  # prisma upsert({where: {name}, update: line, create: line})
            if _exists(pg, table, {"name": line["name"]}):
                names = ", ".join(f'"{k}"' for k in line)
                pg.psql(
                    f'UPDATE "{table}" SET ({names}) = (SELECT {names} FROM json_populate_record('
                    f'NULL::"{table}", {_literal(json.dumps(line))})) '
                    f"WHERE name = {_literal(line['name'])}"
                )
            else:
                _create(pg, table, line)
    return len(rows["ExplanationType"]), len(rows["ExplanationModelType"])


def bench_explanations(store_dir: Path, layers: list[int], path: Path) -> int:
    from explorer.explanations import Explanations, NewExplanation
    from explorer.store import Store

    store = Store.open(store_dir)
    rows = []
    for layer in layers:
        for f, text in enumerate(store.descriptions(layer)):
            if text.strip():
                rows.append(
                    NewExplanation(
                        layer=layer, feature=f, text=text, source="bench",
                        method="max-activating-examples",
                        model="gemma-3-270m" if f % 4 == 3 else "gpt-4o-mini",
                    )
                )  # fmt: skip
    return Explanations(path).add(rows)


# -- counts ----------------------------------------------------------------------------------------


def counts(pg: Postgres, model_id: str, source_id: str, public: list[str]) -> dict[str, int]:
    m, s = _literal(model_id), _literal(source_id)
    out: dict[str, int] = {}
    for table in TABLES:
        releases = f'SELECT "releaseName" FROM "SourceSet" WHERE "modelId" = {m}'
        where = {
            "SourceRelease": f"name IN ({releases})",
            "Model": f"id = {m}",
            "SourceSet": f'"modelId" = {m}',
            "Source": f'"modelId" = {m} AND id = {s}',
        }.get(table, f'"modelId" = {m} AND layer = {s}')
        out[table] = int(pg.psql(f'SELECT count(*) FROM "{table}" WHERE {where}').strip())
    # getNeuronOptimized: creatorId in PUBLIC_ACTIVATIONS_USER_IDS, plus the neuron's creator
    # when it has a vector; summed over the source's feature pages.
    visible = pg.rows(
        f'SELECT count(*) AS acts, count(DISTINCT a.index) AS pages FROM "Activation" a '
        f'JOIN "Neuron" n ON (n."modelId", n.layer, n.index) = (a."modelId", a.layer, a.index) '
        f'WHERE a."modelId" = {m} AND a.layer = {s} AND (a."creatorId" = ANY({_array(public)}) '
        f'OR (n."hasVector" AND a."creatorId" = n."creatorId"))'
    )[0]
    out["activations shown on feature pages"] = int(visible["acts"])
    out["feature pages with activations"] = int(visible["pages"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--neuronpedia", type=Path, required=True, help="their repository")
    p.add_argument("--commit", default=COMMIT, help="read a git directory at this commit")
    p.add_argument("--store", type=Path, default=ROOT / "assets" / "store")
    p.add_argument("--layers", type=int, nargs="+", default=[9])
    p.add_argument("--explanations", type=Path, default=None, help="default: made (see above)")
    p.add_argument("--work", type=Path, default=None, help="default: a new folder in /tmp")
    p.add_argument("--creator-id", default=None, help="neuronpedia-export's --creator-id")
    p.add_argument("--explanation-type", default=None)
    p.add_argument("--explanation-model", default=None)
    p.add_argument(
        "--public-activations-user-ids", default=PUBLIC_DEFAULT,
        help="the webapp's PUBLIC_ACTIVATIONS_USER_IDS (default: theirs)",
    )  # fmt: skip
    p.add_argument("--config", type=Path, default=None, help="their v1/config/*.jsonl, if had")
    p.add_argument("--no-pgvector", action="store_true", help="vector(256) columns as real[]")
    p.add_argument("--keep", action="store_true", help="leave the database running")
    p.add_argument("--skip-import", action="store_true", help="stop before their import")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from precompute.explain.neuronpedia import (
        DEFAULT_CREATOR_ID,
        EXPLANATION_MODELS,
        EXPLANATION_TYPES,
        ExplanationNames,
        export_store,
    )

    repo = Repo(args.neuronpedia, args.commit)
    repo.check_statements()
    print(f"neuronpedia: {args.neuronpedia} at {repo.revision()}")
    work = args.work or Path(tempfile.mkdtemp(prefix="gse-np-import-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)  # the postgres user reaches WORK/pg (its parents must let it too)

    xpath = args.explanations
    if xpath is None:
        xpath = work / "explanations.sqlite"
        xpath.unlink(missing_ok=True)
        n = bench_explanations(args.store, args.layers, xpath)
        print(f"explanations: {n:,} made in {xpath} (3 in 4 by gpt-4o-mini, 1 by gemma-3-270m)")
    export = work / "export"
    shutil.rmtree(export, ignore_errors=True)
    t = time.perf_counter()
    try:
        report = export_store(
            args.store, export, explanations=xpath, layers=tuple(args.layers),
            creator_id=args.creator_id or DEFAULT_CREATOR_ID,
            names=ExplanationNames(type=args.explanation_type, model=args.explanation_model),
        )  # fmt: skip
    except ValueError as e:
        raise SystemExit(f"export: {e}") from None
    print(f"export ({time.perf_counter() - t:.0f} s): {report.summary()}")

    pg = Postgres(work / "pg")
    pg.start()
    try:
        t = time.perf_counter()
        n = migrate(pg, repo, pgvector=not args.no_pgvector)
        vector = "pgvector" if not args.no_pgvector else "NO pgvector: vector(256) as real[]"
        print(
            f"postgres {pg.url}: {n} migrations applied ({time.perf_counter() - t:.0f} s; {vector})"
        )
        seed(pg)
        n_types, n_models = load_config(pg, repo, args.config)
        where = args.config or "names in their repository"
        print(f"seeded: {len(SEED_USERS)} users; config ({where}): {n_types} explanation types, "
              f"{n_models} explainer models")  # fmt: skip
        if args.config is None:
            types, models = repo.config_names()
            for mine, theirs, what in (
                (EXPLANATION_TYPES, types, "types"), (EXPLANATION_MODELS, models, "models"),
            ):  # fmt: skip
                if set(mine) != set(theirs):
                    print(f"  note: neuronpedia.py's {what} differ from theirs: "
                          f"{sorted(set(mine) ^ set(theirs))}")  # fmt: skip
        if args.skip_import:
            print(f"import skipped; the database is {pg.url}")
            return
        public = [x.strip() for x in args.public_activations_user_ids.split(",") if x.strip()]
        for source in report.sources:
            model_id, source_id = source.split("/")
            t = time.perf_counter()
            status = "complete"
            try:
                for message in run_import(pg, Bucket(export), model_id, source_id):
                    print(f"  {message}")
            except Failed as e:
                status = f"ABORTED: {e}"
            took = time.perf_counter() - t
            print(f"import {model_id}/{source_id} ({took:.0f} s): {status}")
            for name, n in counts(pg, model_id, source_id, public).items():
                print(f"  {name}: {n:,}")
            print(f"  (PUBLIC_ACTIVATIONS_USER_IDS={','.join(public)})")
    finally:
        if args.keep or args.skip_import:
            print(f"left running: {pg.url} (stop: pg_ctl -D {pg.root / 'data'} stop)")
        else:
            pg.stop()
            shutil.rmtree(pg.root, ignore_errors=True)


if __name__ == "__main__":
    main()
