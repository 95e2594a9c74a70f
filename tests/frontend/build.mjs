// Bundles the front-end recipes that tests/test_frontend_recipes.py extracted from
// docs/recipes/frontend.md into build/recipes/, one ES module per framework, in build/out/.
// The package's browser module stays an import of the URL the router serves it at.
import * as esbuild from "esbuild";
import vue from "esbuild-plugin-vue3";
import svelte from "esbuild-svelte";

const result = await esbuild.build({
  absWorkingDir: import.meta.dirname,
  entryPoints: {react: "entries/react.jsx", vue: "entries/vue.js", svelte: "entries/svelte.js"},
  bundle: true,
  format: "esm",
  outdir: "build/out",
  external: ["/api/*"],
  jsx: "automatic",
  define: {"process.env.NODE_ENV": '"production"'},
  plugins: [vue(), svelte()],
  logLevel: "error",
});
console.log(JSON.stringify({errors: result.errors.length, warnings: result.warnings.length}));
