// The API documentation page (/docs): Swagger UI, served from the package, over this service's /openapi.json.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null, // never ask swagger.io to validate the document: nothing leaves this network
    tryItOutEnabled: false,
  });
});
