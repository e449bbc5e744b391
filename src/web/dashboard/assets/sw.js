// Doppel's service worker: shows pushed alarms as notifications and opens the device on click.
self.addEventListener("push", (event) => {
  let data = {};
  try {
    data = event.data ? event.data.json() : {};
  } catch {
    data = { title: "Doppel", body: event.data ? event.data.text() : "" };
  }
  event.waitUntil(
    self.registration.showNotification(data.title || "Doppel alarm", {
      body: data.body || "",
      tag: data.alarm ? `alarm-${data.alarm.id}` : undefined,
      data: { url: data.url || "/alarms" },
    }),
  );
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.openWindow(event.notification.data.url));
});
