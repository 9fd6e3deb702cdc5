// A Node.js app using the dispatcher gateway: built-in fetch only, no npm packages.
// Submits a job, long-polls until it ends, prints the result as one JSON line.
//   GATEWAY_URL=http://127.0.0.1:8080 DISPATCHER_GATEWAY_TOKEN=... ENDPOINT=llm node client.mjs
const base = process.env.GATEWAY_URL;
const headers = {
  "Authorization": `Bearer ${process.env.DISPATCHER_GATEWAY_TOKEN}`,
  "Content-Type": "application/json",
};

async function call(method, path, body) {
  const res = await fetch(base + path, {method, headers, body: body && JSON.stringify(body)});
  const doc = await res.json();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${doc.error}`);
  return doc;
}

const prompt = process.argv[2] || "hello from node";
const {id, status} = await call("POST", "/v1/jobs", {
  endpoint: process.env.ENDPOINT, path: "/v1/completions",
  payload: {prompt, max_tokens: 16}, cost: 16,
});
console.error(`submitted ${id} (${status})`);

let job;
do {  // each GET holds until the job ends, or 20 s; then ask again
  job = await call("GET", `/v1/jobs/${id}?wait=20`);
} while (!["succeeded", "failed", "expired", "cancelled"].includes(job.status));

if (job.status !== "succeeded") throw new Error(`job ${id} ${job.status}: ${job.error}`);
console.log(JSON.stringify({id, status: job.status, result: job.result}));
