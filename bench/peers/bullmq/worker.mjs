// BullMQ's worker for `make bench-peers` (python -m bench.peers): queue "bench", SLOTS concurrent jobs,
// each one chat completion POSTed with fetch to the simulator at BASE_URL; prints "ready" once it takes
// jobs and closes gracefully on SIGTERM. Environment: REDIS_URL, BASE_URL, SLOTS.
import { Worker } from "bullmq";

const { REDIS_URL, BASE_URL, SLOTS } = process.env;

async function chat(job) {
  const response = await fetch(`${BASE_URL}/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: "Bearer sk-bench" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: job.data.prompt }] }),
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  const body = await response.json();
  return body.choices[0].message.content;
}

const worker = new Worker("bench", chat, { connection: { url: REDIS_URL }, concurrency: Number(SLOTS) });
worker.on("error", (err) => console.error(err));
await worker.waitUntilReady();
console.log("ready");

process.once("SIGTERM", async () => {
  await worker.close();
  process.exit(0);
});
