/**
 * Adapts a WebSocket to the Node `Duplex` stream aedes serves, for MQTT over WebSocket.
 * @module
 */
import { Buffer } from "node:buffer";
import { Duplex } from "node:stream";

/** A duplex stream over a server-side WebSocket carrying binary MQTT frames. */
export function websocketStream(socket: WebSocket): Duplex {
  socket.binaryType = "arraybuffer";
  const stream = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      try {
        if (socket.readyState === WebSocket.OPEN) socket.send(chunk);
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
    final(callback) {
      socket.close();
      callback();
    },
    destroy(error, callback) {
      if (socket.readyState < WebSocket.CLOSING) socket.close();
      callback(error);
    },
  });
  // Deno's node:stream `read()` without a size returns only the first buffered chunk (Node
  // returns all), which stalls aedes on a CONNECT split over small frames: ask for everything.
  const read = stream.read.bind(stream);
  stream.read = (size?: number) =>
    read(size ?? (stream.readableLength > 0 ? stream.readableLength : undefined));
  socket.addEventListener("message", (event) => {
    const data = event.data;
    stream.push(
      typeof data === "string"
        ? Buffer.from(data)
        : Buffer.from(new Uint8Array(data as ArrayBuffer)),
    );
  });
  socket.addEventListener("close", () => {
    stream.push(null);
    stream.destroy();
  });
  socket.addEventListener("error", () => stream.destroy());
  return stream;
}
