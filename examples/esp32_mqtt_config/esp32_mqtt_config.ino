// Learn of config changes at once from iot-config's MQTT notifications, and fetch only then.
//
// The server keeps one retained message per device on <prefix>/<canonical-mac> holding
// {"etag": "<etag>"}, the current version of its config. Subscribing delivers it at once, so a
// device waking from deep sleep knows within a round trip whether its stored copy is current:
// equal ETags mean no HTTP request at all. A different ETag means fetch, sending the stored ETag
// as If-None-Match (a 304 costs no body). An empty retained message means "no config stored".
// No message within WAIT_MS (broker without the notifications, or MQTT down) means: poll over
// HTTP as esp32_fetch_config does, so the device never depends on MQTT alone.
//
// This sketch sleeps between checks (deep sleep); an always-on device would instead stay
// connected and call fetchConfig() from onMessage whenever the ETag changes.
// Board: any ESP32 with the Arduino core. Library: PubSubClient (Nick O'Leary).

#include <WiFi.h>
#include <HTTPClient.h>
#include <Preferences.h>
#include <PubSubClient.h>

static const char *WIFI_SSID = "your-ssid";
static const char *WIFI_PASSWORD = "your-password";
static const char *SERVER = "http://iot-config.example.lan:8080";  // no trailing slash
static const char *MQTT_HOST = "mqtt.example.lan";
static const uint16_t MQTT_PORT = 1883;
static const char *MQTT_USER = "device";
static const char *MQTT_PASSWORD = "device-password";
static const char *TOPIC_PREFIX = "iotsupport/devices";  // IOT_CONFIG_MQTT_TOPIC_PREFIX
static const uint32_t WAIT_MS = 3000;                     // for the retained message
static const uint64_t SLEEP_US = 15ULL * 60ULL * 1000000ULL;

Preferences prefs;
WiFiClient net;
PubSubClient mqtt(net);
String etag;  // the stored config's ETag as the server sends it: with quotes, "abc..."

enum class Heard { Nothing, Current, Changed, Deleted };
Heard heard = Heard::Nothing;

String canonicalMac() {
  String mac = WiFi.macAddress();  // "AA:BB:CC:DD:EE:FF" -> "aa-bb-cc-dd-ee-ff"
  mac.toLowerCase();
  mac.replace(':', '-');
  return mac;
}

// The value of "etag" in {"etag": "..."}; the server writes nothing else into this message.
String etagOf(const String &payload) {
  int key = payload.indexOf("\"etag\"");
  int open = key < 0 ? -1 : payload.indexOf('"', payload.indexOf(':', key) + 1);
  int close = open < 0 ? -1 : payload.indexOf('"', open + 1);
  return close < 0 ? String() : payload.substring(open + 1, close);
}

void onMessage(char *topic, byte *payload, unsigned int length) {
  if (length == 0) {  // the retained message was cleared: the config was deleted
    heard = Heard::Deleted;
    return;
  }
  String text;
  text.reserve(length);
  for (unsigned int i = 0; i < length; i++) {
    text += (char)payload[i];
  }
  // The HTTP ETag header is the same value in quotes.
  heard = ("\"" + etagOf(text) + "\"") == etag ? Heard::Current : Heard::Changed;
}

void applyConfig(const String &json) {
  Serial.printf("new config (%u bytes)\n", json.length());
}

// The same conditional GET as esp32_fetch_config: If-None-Match with the stored ETag.
void fetchConfig() {
  HTTPClient http;
  if (!http.begin(String(SERVER) + "/esp32/config/" + canonicalMac() + ".json")) {
    return;
  }
  const char *wanted[] = {"ETag"};
  http.collectHeaders(wanted, 1);
  if (etag.length() > 0) {
    http.addHeader("If-None-Match", etag);
  }
  int status = http.GET();
  if (status == HTTP_CODE_OK) {
    String json = http.getString();
    etag = http.header("ETag");
    if (prefs.putString("config", json) > 0) {
      prefs.putString("etag", etag);
    } else {
      prefs.remove("etag");  // too big for NVS: fetch it whole next time
    }
    applyConfig(json);
  } else if (status != HTTP_CODE_NOT_MODIFIED) {
    Serial.printf("config fetch: %d; keeping the stored config\n", status);
  }
  http.end();
}

// Connect, subscribe to this device's topic and wait briefly for its retained message.
Heard askBroker() {
  mqtt.setServer(MQTT_HOST, MQTT_PORT);
  mqtt.setCallback(onMessage);
  String id = "esp32-" + canonicalMac();
  if (!mqtt.connect(id.c_str(), MQTT_USER, MQTT_PASSWORD)) {
    return Heard::Nothing;
  }
  String topic = String(TOPIC_PREFIX) + "/" + canonicalMac();
  mqtt.subscribe(topic.c_str(), 1);
  uint32_t start = millis();
  while (heard == Heard::Nothing && millis() - start < WAIT_MS) {
    mqtt.loop();
    delay(10);
  }
  mqtt.disconnect();
  return heard;
}

void setup() {
  Serial.begin(115200);
  prefs.begin("iot-config", false);
  etag = prefs.getString("etag", "");
  String stored = prefs.getString("config", "");
  if (stored.length() > 0) {
    applyConfig(stored);
  }
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  for (int i = 0; i < 40 && WiFi.status() != WL_CONNECTED; i++) {
    delay(500);
  }
  if (WiFi.status() == WL_CONNECTED) {
    switch (askBroker()) {
      case Heard::Current:
        Serial.println("config current: no HTTP request");
        break;
      case Heard::Deleted:
        Serial.println("no config stored for this device; keeping the current one");
        break;
      case Heard::Changed:  // a new version
      case Heard::Nothing:  // no answer from MQTT: fall back to polling
        fetchConfig();
        break;
    }
  }
  esp_sleep_enable_timer_wakeup(SLEEP_US);
  esp_deep_sleep_start();
}

void loop() {}
