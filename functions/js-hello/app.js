// js-hello: a wasi:http/proxy function in JavaScript, built with jco componentize
// (componentize-js). The engine turns each incoming request into a fetch event.
addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  event.respondWith(
    new Response(`hello from javascript (${event.request.method} ${url.pathname}${url.search})\n`, {
      headers: { "content-type": "text/plain; charset=utf-8" },
    }),
  );
});
