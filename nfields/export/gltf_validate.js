// Run the Khronos glTF validator on one .gltf/.glb file and print its report as JSON on stdout.
// Usage: NODE_PATH=<node_modules> node gltf_validate.js <file>   (called by nfields/export/validate.py)
"use strict";
const fs = require("fs");
const path = require("path");
const validator = require("gltf-validator");

const file = path.resolve(process.argv[2]);
const bytes = new Uint8Array(fs.readFileSync(file));
validator
  .validateBytes(bytes, {
    uri: path.basename(file),
    maxIssues: 0, // 0 = no limit
    // External buffers and images (.gltf + .bin + .png) are read from beside the file.
    externalResourceFunction: (uri) =>
      new Promise((resolve, reject) => {
        fs.readFile(path.resolve(path.dirname(file), decodeURIComponent(uri)), (err, data) =>
          err ? reject(err.toString()) : resolve(new Uint8Array(data)),
        );
      }),
  })
  .then(
    (report) => process.stdout.write(JSON.stringify(report)),
    (err) => {
      process.stderr.write(String(err) + "\n");
      process.exit(3);
    },
  );
