// Camera and microphone. Asks for both, falls back to fewer devices, and
// turns every failure into a sentence a person can act on.

const VIDEO_CONSTRAINTS = { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 24 } };

export class MediaError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function explain(err, what) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return new MediaError("denied", `Access to the ${what} was denied. Allow it in the browser's site settings and reload.`);
    case "NotFoundError":
    case "OverconstrainedError":
      return new MediaError("missing", `No ${what.replace(" and ", " or ")} was found.`);
    case "NotReadableError":
    case "AbortError":
      return new MediaError("busy", `The ${what} is in use by another application or could not be started.`);
    default:
      return new MediaError("failed", `The ${what} could not be opened (${err && err.name ? err.name : err}).`);
  }
}

// Returns { stream, warning }: the best stream available (possibly empty, to
// join receive-only) and a sentence for the user when something is missing.
export async function openLocalMedia() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return {
      stream: new MediaStream(),
      warning: "This page cannot use a camera or microphone: browsers allow them only over HTTPS or on localhost. You can still watch and chat.",
    };
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: VIDEO_CONSTRAINTS });
    return { stream, warning: null };
  } catch (err) {
    const both = explain(err, "camera and microphone");
    console.warn("media: camera and microphone unavailable:", err && err.name, err && err.message);
    if (both.code === "denied") {
      return { stream: new MediaStream(), warning: both.message + " You can still watch and chat." };
    }
    // One of the two may still work.
    for (const [constraints, missing] of [
      [{ audio: true }, "camera"],
      [{ video: VIDEO_CONSTRAINTS }, "microphone"],
    ]) {
      try {
        const stream = await navigator.mediaDevices.getUserMedia(constraints);
        return { stream, warning: `No ${missing} is available; joined without it.` };
      } catch {
        // try the next one
      }
    }
    return { stream: new MediaStream(), warning: both.message + " You can still watch and chat." };
  }
}

export function setTrackEnabled(stream, kind, enabled) {
  for (const track of stream.getTracks()) {
    if (track.kind === kind) track.enabled = enabled;
  }
}

export function hasTrack(stream, kind) {
  return stream.getTracks().some((t) => t.kind === kind);
}
