// Display names: pure helpers, no DOM (unit-tested in Node).

// Up to two initials for an avatar, from the words that start with a letter
// or a digit: "Zed" -> "Z", "Ada Lovelace" -> "AL", "(you)" counts for nothing.
export function initials(name) {
  const letters = String(name || "")
    .split(/\s+/)
    .map((word) => (word.match(/^[\p{L}\p{N}]/u) || [])[0])
    .filter(Boolean);
  return letters.slice(0, 2).join("").toUpperCase() || "?";
}

// "1 person in the room", "3 people in the room".
export function roomCount(n) {
  return `${n} ${n === 1 ? "person" : "people"} in the room`;
}

// The tile text of a peer whose connection to the server dropped: its place
// is kept until `until` (ms since the epoch).
export function awayText(until, now) {
  const left = Math.max(0, Math.ceil((until - now) / 1000));
  return `reconnecting · ${left} s left`;
}
