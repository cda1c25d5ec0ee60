// Regenerates src/gen/ from proto/kakeya/v1/runtime.proto with buf and ts-proto (both pinned in
// package.json). `node scripts/generate.mjs [OUT_DIR]` writes elsewhere: the staleness test
// (test/generated.test.ts) regenerates into a temporary folder and compares with src/gen/.
import { execFileSync } from "node:child_process";
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const PROTO_ROOT = resolve(PACKAGE, "../../proto");
const PROTO_FILE = "kakeya/v1/runtime.proto";
const BIN = join(PACKAGE, "node_modules", ".bin");

export function generate(outDir) {
  mkdirSync(outDir, { recursive: true });
  execFileSync(join(BIN, "buf"), [
    "generate", PROTO_ROOT, "--path", join(PROTO_ROOT, PROTO_FILE),
    "--template", join(PACKAGE, "buf.gen.yaml"), "--output", outDir,
  ], {
    cwd: PACKAGE,
    // buf finds the local plugin (protoc-gen-ts_proto) on PATH.
    env: { ...process.env, PATH: `${BIN}:${process.env.PATH ?? ""}` },
    stdio: ["ignore", "inherit", "inherit"],
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  generate(resolve(process.argv[2] ?? join(PACKAGE, "src", "gen")));
}
