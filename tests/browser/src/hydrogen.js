// The whole Hydrogen web client (login, session, room list, create and join rooms,
// timeline, composer, attachments, end-to-end encryption with olm) from hydrogen-view-sdk,
// mounted in #app the way its SDK documents: a Platform with the assets it loads at run
// time, a URL router on the location hash, and the root view model and view.
import { Platform, createNavigation, createRouter, RootViewModel, FeatureSet } from "hydrogen-view-sdk";
import downloadSandbox from "hydrogen-view-sdk/download-sandbox.html?url";
import worker from "hydrogen-view-sdk/main.js?url";
import olmWasm from "@matrix-org/olm/olm.wasm?url";
import olmJs from "@matrix-org/olm/olm.js?url";
import olmLegacy from "@matrix-org/olm/olm_legacy.js?url";
import "hydrogen-view-sdk/theme-element-light.css";

async function start() {
  const container = document.getElementById("app");
  const platform = new Platform({
    container,
    assetPaths: {
      downloadSandbox,
      worker,
      olm: { wasm: olmWasm, legacyBundle: olmLegacy, wasmBundle: olmJs },
      serviceWorker: "sw.js",
    },
    config: {},
    options: { development: false },
  });
  const navigation = createNavigation();
  platform.setNavigation(navigation);
  await platform.init();
  const urlRouter = createRouter({ navigation, history: platform.history });
  urlRouter.attach();
  const features = await FeatureSet.load(platform.settingsStorage);
  const vm = new RootViewModel({ platform, navigation, urlRouter, features });
  await vm.load();
  platform.createAndMountRootView(vm);
  document.body.dataset.ready = "1";
}

start().catch((e) => {
  document.body.dataset.error = String((e && e.stack) || e);
  throw e;
});
