"""The peer for `cargo bench -p canon-catalog --bench validate`: the same event, decoded with
json.loads and its payload validated with Python's `jsonschema` (the stack seed 003 uses),
against the schema Canon expands from the same catalog (`canon catalog show --format json`).

Usage: python3 bench/python_jsonschema.py CATALOG EVENTS INDEX PAYLOAD_MEMBER
"""
import json, subprocess, sys, time
import jsonschema

catalog, events, index, member = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
doc = json.dumps(json.load(open(events))[index])
shown = json.loads(subprocess.check_output(["target/release/canon", "catalog", "show", catalog, "--format", "json"]))
ev = json.loads(doc)
ty = ev.get("type") or ev.get("event_name") or ev.get("event_type")
schema = next(t for t in shown["types"] if t["type"] == ty)["versions"][0]["schema"]
validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
n, start = 0, time.perf_counter()
while time.perf_counter() - start < 3:
    for _ in range(1000):
        e = json.loads(doc)
        payload = {k: v for k, v in e.items() if k not in ("event_id", "event_type", "timestamp", "version", "correlation_id", "causation_id", "metadata")} if member == "." else e[member]
        assert validator.is_valid(payload)
    n += 1000
elapsed = time.perf_counter() - start
print(f"{ty} {len(doc)}B: {n / elapsed:,.0f} events/s")
