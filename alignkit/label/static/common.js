// Shared by the pages: JSON requests and DOM building that only ever sets text, never markup.
"use strict";

async function request(method, url, body) {
  const options = { method: method, headers: {} };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  const data = await response.json().catch(function () { return {}; });
  if (!response.ok) throw new Error(data.error || ("HTTP " + response.status));
  return data;
}

// el("div", {class: "x"}, "text", child...) — strings become text nodes, so untrusted text stays text.
function el(tag, attrs) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(function (kv) { node.setAttribute(kv[0], kv[1]); });
  Array.prototype.slice.call(arguments, 2).forEach(function (child) {
    node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
  });
  return node;
}

function setText(id, text) { document.getElementById(id).textContent = text; }

function param(name) { return new URLSearchParams(window.location.search).get(name) || ""; }
