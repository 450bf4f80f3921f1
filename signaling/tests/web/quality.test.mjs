// The demo page's call-quality logic (signaling/web/quality.js), run in
// Node: what the page reports to the server as `stats`, from getStats
// readings. The browser tests show the whole loop; this pins the decision
// that made video come back in the middle of heavy loss.
import { test } from "node:test";
import assert from "node:assert/strict";
import { QualityMonitor, MIN_PACKETS_FOR_LOSS } from "../../web/quality.js";

// A peer connection whose getStats returns what `counters` holds now.
function connection(counters) {
  return {
    connectionState: "connected",
    async getStats() {
      return new Map([
        ["T", { type: "transport", selectedCandidatePairId: "P" }],
        ["P", { type: "candidate-pair", currentRoundTripTime: 0.05, localCandidateId: "L", remoteCandidateId: "R" }],
        ["L", { type: "local-candidate", candidateType: "relay" }],
        ["R", { type: "remote-candidate", candidateType: "relay" }],
        ["A", { type: "inbound-rtp", kind: "audio", packetsReceived: counters.received, packetsLost: counters.lost, bytesReceived: 0 }],
      ]);
    },
  };
}

function monitor(pc) {
  const sent = [];
  const mesh = { links: new Map([["p-B", { pc }]]) };
  const quality = new QualityMonitor({ mesh, sendStats: (s) => sent.push(s) });
  return { quality, sent };
}

test("the first reading has no interval and reports nothing", async () => {
  const counters = { received: 1000, lost: 0 };
  const { quality, sent } = monitor(connection(counters));
  await quality.tick();
  assert.deepEqual(sent, [], "a first reading must not be reported as a clean path");
});

test("loss over an interval is reported", async () => {
  const counters = { received: 1000, lost: 0 };
  const { quality, sent } = monitor(connection(counters));
  await quality.tick();
  counters.received += 65;
  counters.lost += 35;
  await quality.tick();
  assert.equal(sent.length, 1);
  assert.equal(sent[0].loss, 0.35);
});

test("after the connection drops and comes back, the first reading is not a clean report", async () => {
  const counters = { received: 1000, lost: 0 };
  const pc = connection(counters);
  const { quality, sent } = monitor(pc);
  await quality.tick();
  counters.received += 60;
  counters.lost += 40;
  await quality.tick();
  assert.equal(sent.at(-1).loss, 0.4);
  pc.connectionState = "disconnected";
  await quality.tick();
  pc.connectionState = "connected";
  counters.received += 5;
  const before = sent.length;
  await quality.tick();
  assert.equal(sent.length, before, `reported ${JSON.stringify(sent.at(-1))} without a baseline`);
  counters.received += 60;
  counters.lost += 40;
  await quality.tick();
  assert.equal(sent.at(-1).loss, 0.4);
});

test("an interval with too few packets says nothing about loss", async () => {
  const counters = { received: 1000, lost: 0 };
  const { quality, sent } = monitor(connection(counters));
  await quality.tick();
  counters.received += MIN_PACKETS_FOR_LOSS - 1;
  await quality.tick();
  assert.deepEqual(sent, []);
  counters.received += MIN_PACKETS_FOR_LOSS;
  await quality.tick();
  assert.equal(sent.length, 1);
  assert.equal(sent[0].loss, 0);
});
