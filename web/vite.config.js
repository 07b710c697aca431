import { defineConfig } from 'vite';

// `npm run dev` proxies the node (scripts/run) so the dev server works like the served build
export default defineConfig({
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: true,
    chunkSizeWarningLimit: 600,
    rollupOptions: {
      // the service worker is an entry of its own, at the site root (/sw.js: scope /), unhashed
      input: { main: 'index.html', sw: 'src/sw/sw.js' },
      output: { entryFileNames: (chunk) => (chunk.name === 'sw' ? 'sw.js' : 'assets/[name]-[hash].js') },
      // autobahn-browser's prebuilt bundle has a direct eval (its optional Node.js paths): known
      onwarn(warning, warn) {
        if (warning.code === 'EVAL' && String(warning.id || warning.message).includes('autobahn')) return;
        warn(warning);
      },
    },
  },
  server: {
    proxy: {
      '/ws': { target: 'ws://127.0.0.1:8080', ws: true },
      '/media': 'http://127.0.0.1:8080',
      '/.well-known': 'http://127.0.0.1:8080',
    },
  },
  test: { include: ['test/**/*.test.js'], environment: 'node' },
});
