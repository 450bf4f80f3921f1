// Display-name helpers of the demo page (signaling/web/names.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { initials, roomCount } from "../../web/names.js";

test("initials come from words that start with a letter or digit", () => {
  assert.equal(initials("Zed"), "Z");
  assert.equal(initials("Zed (you)"), "Z");
  assert.equal(initials("ada lovelace"), "AL");
  assert.equal(initials("Émile 2nd Zola"), "É2");
  assert.equal(initials("  "), "?");
  assert.equal(initials("(((")," ?".trim());
});

test("the room count reads as a person would say it", () => {
  assert.equal(roomCount(1), "1 person in the room");
  assert.equal(roomCount(3), "3 people in the room");
});

test("an away peer's tile counts down whole seconds and never below zero", async () => {
  const { awayText } = await import("../../web/names.js");
  assert.equal(awayText(60_000, 0), "reconnecting · 60 s left");
  assert.equal(awayText(60_000, 59_001), "reconnecting · 1 s left");
  assert.equal(awayText(60_000, 70_000), "reconnecting · 0 s left");
});
