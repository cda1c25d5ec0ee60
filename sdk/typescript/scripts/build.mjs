// Builds dist/esm (ES modules) and dist/cjs (CommonJS), each with its type declarations.
// The package is "type": "module"; dist/cjs/package.json marks its files as CommonJS.
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const TSC = join(PACKAGE, "node_modules", "typescript", "bin", "tsc");

rmSync(join(PACKAGE, "dist"), { recursive: true, force: true });
for (const project of ["tsconfig.json", "tsconfig.cjs.json"]) {
  execFileSync(process.execPath, [TSC, "-p", join(PACKAGE, project)], { cwd: PACKAGE, stdio: "inherit" });
}
writeFileSync(join(PACKAGE, "dist", "cjs", "package.json"), '{ "type": "commonjs" }\n');
