// `npm test`: builds the package (dist/esm, dist/cjs), compiles the tests and the examples into
// .test-build/, and runs every *.test.js there with node's test runner. Extra arguments go to
// `node --test` (e.g. --test-name-pattern=...).
import { execFileSync, spawnSync } from "node:child_process";
import { readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const OUT = join(PACKAGE, ".test-build");

execFileSync(process.execPath, [join(PACKAGE, "scripts", "build.mjs")], { stdio: "inherit" });
rmSync(OUT, { recursive: true, force: true });
execFileSync(process.execPath, [join(PACKAGE, "node_modules", "typescript", "bin", "tsc"), "-p",
  join(PACKAGE, "tsconfig.test.json")], { cwd: PACKAGE, stdio: "inherit" });
const files = readdirSync(join(OUT, "test"), { recursive: true })
  .map(String).filter((name) => name.endsWith(".test.js")).sort().map((name) => join(OUT, "test", name));
// Each file bounds its own waits; this only stops a file that hangs regardless.
const result = spawnSync(process.execPath, ["--test", "--test-timeout=900000", ...process.argv.slice(2), ...files],
  { cwd: PACKAGE, stdio: "inherit" });
process.exit(result.status ?? 1);
