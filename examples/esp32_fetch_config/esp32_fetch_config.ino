// Fetch this device's config from iot-config at boot and on a poll, sending the last ETag so an
// unchanged config costs a 304 and no body. The ETag survives reboots in NVS (Preferences), next
// to the config itself. Board: any ESP32 with the Arduino core (WiFi, HTTPClient, Preferences).
//
// Device credentials (IOT_CONFIG_DEVICE_AUTH=optional or required on the server): the device
// sends its own token as "Authorization: Bearer <token>". Print it per device with
//   iot-config device-token AA:BB:CC:DD:EE:FF
// and give it to the device in one of two ways:
//   - NVS (preferred: one firmware image for the whole fleet): write the string to key "token"
//     of namespace "iot-config" at provisioning time, e.g. from a provisioning sketch or over
//     serial with prefs.putString("token", "...");
//   - a build flag for a per-device build: -DIOT_CONFIG_DEVICE_TOKEN=\"v1.xxxx\" (PlatformIO
//     build_flags, or arduino-cli --build-property "build.extra_flags=..."). At boot it is
//     copied into NVS, so later generic firmware keeps it.
// The token is a credential: with plain http:// anyone on the path can read it (and the config).
// Put TLS in front of the server and use https:// with WiFiClientSecure and the CA certificate.

#include <WiFi.h>
#include <HTTPClient.h>
#include <Preferences.h>

static const char *WIFI_SSID = "your-ssid";
static const char *WIFI_PASSWORD = "your-password";
static const char *SERVER = "http://iot-config.example.lan:8080";  // no trailing slash
static const uint32_t POLL_MS = 5UL * 60UL * 1000UL;

Preferences prefs;
String deviceToken;  // this device's token from NVS (or the build flag); empty: none sent
String configJson;  // the last config received (apply it wherever your firmware needs it)
String etag;        // its ETag, sent back as If-None-Match

// The server names configs by the canonical MAC: lower case, hyphens (aa-bb-cc-dd-ee-ff).
String canonicalMac() {
  String mac = WiFi.macAddress();  // "AA:BB:CC:DD:EE:FF"
  mac.toLowerCase();
  mac.replace(':', '-');
  return mac;
}

void applyConfig(const String &json) {
  Serial.printf("new config (%u bytes)\n", json.length());
  // Parse with ArduinoJson or similar and apply; the server only sends valid JSON objects.
}

void fetchConfig() {
  HTTPClient http;
  String url = String(SERVER) + "/esp32/config/" + canonicalMac() + ".json";
  if (!http.begin(url)) {
    Serial.println("bad config URL");
    return;
  }
  const char *wanted[] = {"ETag"};
  http.collectHeaders(wanted, 1);  // HTTPClient drops response headers unless asked for them
  if (etag.length() > 0 && configJson.length() > 0) {
    http.addHeader("If-None-Match", etag);
  }
  if (deviceToken.length() > 0) {
    http.addHeader("Authorization", "Bearer " + deviceToken);
  }

  int status = http.GET();
  if (status == HTTP_CODE_OK) {
    configJson = http.getString();
    etag = http.header("ETag");
    // NVS is small (about 20 KB by default): a config too big for it stays in RAM only, and
    // the stored ETag is dropped so the next boot fetches the full config again.
    if (prefs.putString("config", configJson) > 0) {
      prefs.putString("etag", etag);
    } else {
      prefs.remove("config");
      prefs.remove("etag");
    }
    applyConfig(configJson);
  } else if (status == HTTP_CODE_NOT_MODIFIED) {
    Serial.println("config unchanged");
  } else if (status == HTTP_CODE_UNAUTHORIZED) {
    // Missing, wrong (another device's), retired or revoked token: re-provision this device.
    // The server answers the same 401 whether or not a config exists, so keep the current one.
    Serial.println("config fetch refused: this device's token is missing or not accepted");
  } else if (status == HTTP_CODE_NOT_FOUND) {
    Serial.printf("no config for %s yet; keeping the current one\n", canonicalMac().c_str());
  } else {
    // Negative values are connection errors; keep the stored config and try at the next poll.
    Serial.printf("config fetch failed: %d %s\n", status, http.errorToString(status).c_str());
  }
  http.end();
}

void setup() {
  Serial.begin(115200);
  prefs.begin("iot-config", false);
  configJson = prefs.getString("config", "");
  etag = prefs.getString("etag", "");
  deviceToken = prefs.getString("token", "");
#ifdef IOT_CONFIG_DEVICE_TOKEN
  if (deviceToken != IOT_CONFIG_DEVICE_TOKEN) {  // flashing a token re-provisions the device
    deviceToken = IOT_CONFIG_DEVICE_TOKEN;
    prefs.putString("token", deviceToken);
  }
#endif
  if (configJson.length() > 0) {
    applyConfig(configJson);  // boot with the last known config, even without a network
  }
  WiFi.mode(WIFI_STA);
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
  for (int i = 0; i < 40 && WiFi.status() != WL_CONNECTED; i++) {
    delay(500);
  }
  fetchConfig();
}

void loop() {
  static uint32_t last = millis();
  if (millis() - last >= POLL_MS) {
    last = millis();
    if (WiFi.status() == WL_CONNECTED) {
      fetchConfig();
    } else {
      WiFi.reconnect();
    }
  }
  delay(100);
}
