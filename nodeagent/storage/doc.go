// Package storage keeps checkpoint images outside host memory: on the node's local disk and in
// S3-compatible object storage, and brings them back. It is the node agent's; the agent's tier
// policy decides when an image moves, this package moves it.
//
// An image is a folder of files (the CRIU image of a container and its metadata.json, see
// package image). In every tier it is stored the same way, as objects under one prefix:
//
//	<namespace>/<name>/files/<file>   each file, encrypted (see below)
//	<namespace>/<name>/manifest.json  written last
//
// The manifest lists every file with the SHA-256 and size of its plaintext and of its stored
// (encrypted) object, and carries an HMAC-SHA256 under a key derived from the namespace's key.
// A tier holds an image only when its manifest is there; objects without one are a move that
// did not finish, which readers never use and the next Put or Copy finishes or overwrites. A
// manifest is deleted first, so an image being deleted stops being an image at once.
//
// Files are encrypted at rest with AES-256-GCM in the STREAM construction (Hoang, Reyhanitabar,
// Rogaway, Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance",
// 2015), laid out like Tink's AES-GCM-HKDF streaming AEAD: a per-file key is derived with
// HKDF-SHA256 from the namespace's key, a random salt and the file's place (image and file
// name); the plaintext is cut into fixed-size chunks, each sealed with the nonce
// prefix || counter || last-chunk flag. Truncating, reordering, extending or swapping chunks
// or whole files fails authentication. Keys are never logged: Key prints as [redacted].
//
// Moves stream: nothing holds a whole file in memory. Uploads to object storage are multipart
// with retries (minio-go); an interrupted Copy is resumed file by file, skipping objects whose
// stored SHA-256 already matches. Restore checks the manifest's HMAC, each chunk's tag and each
// file's SHA-256 before it hands out the folder, and refuses a damaged image with an error that
// names the file, deleting nothing that was stored.
package storage
