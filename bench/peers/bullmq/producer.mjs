// BullMQ's producer for `make bench-peers` (python -m bench.peers), the same CLI and JSON line as the
// Python ones (bench/peers/side.py):
//
//     node producer.mjs batch --redis URL --jobs 3000    submit them all, then wait for every result
//     node producer.mjs rtt --redis URL --probes 100     sequential round trips after 5 uncounted ones
//
// It waits the way BullMQ does: QueueEvents (a Redis stream read) and job.waitUntilFinished().
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import { Queue, QueueEvents } from "bullmq";

const WARM_UP = 5;
const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { redis: { type: "string" }, jobs: { type: "string", default: "3000" }, probes: { type: "string", default: "100" } },
});
const what = positionals[0];
if (!["batch", "rtt"].includes(what) || !values.redis) {
  console.error("usage: producer.mjs batch|rtt --redis URL [--jobs N] [--probes N]");
  process.exit(2);
}

const connection = { url: values.redis };
const queue = new Queue("bench", { connection });
const events = new QueueEvents("bench", { connection });
await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
const out = { rtt_ms: [] };

if (what === "batch") {
  const jobs = Number(values.jobs);
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const added = await queue.addBulk(Array.from({ length: jobs }, (_, i) => ({ name: "chat", data: { prompt: `bench prompt ${i}` } })));
  const results = await Promise.all(added.map((job) => job.waitUntilFinished(events, 600_000)));
  const cpu = process.cpuUsage(cpu0);
  out.seconds = (performance.now() - t0) / 1000;
  out.cpu_s = (cpu.user + cpu.system) / 1e6;
  if (results.length !== jobs || !results.every(Boolean)) throw new Error("a job failed");
} else {
  for (let i = -WARM_UP; i < Number(values.probes); i++) {
    const t0 = performance.now();
    const job = await queue.add("chat", { prompt: `latency probe ${i}` });
    if (!(await job.waitUntilFinished(events, 10_000))) throw new Error("a job failed");
    if (i >= 0) out.rtt_ms.push(performance.now() - t0);
    await sleep(10);
  }
}

await events.close();
await queue.close();
console.log(JSON.stringify(out));
