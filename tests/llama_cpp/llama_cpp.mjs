// llama.cpp (node-llama-cpp's prebuilt CPU libraries) on a GGUF file: the next-token logits after
// every prefix of a token list, or a greedy continuation. Prints one JSON object.
//   node llama_cpp.mjs logits MODEL.gguf 1,2,3        -> {"logits": [[...vocab], ...]}
//   node llama_cpp.mjs greedy MODEL.gguf 1,2,3 COUNT  -> {"tokens": [...]}
//   node llama_cpp.mjs tokenize MODEL.gguf TEXT       -> {"tokens": [...]} (the file's tokenizer)
// KV cache in F32 and no flash attention: llama.cpp's exact path, what megamoe's fp32 cache matches.
import {getLlama} from "node-llama-cpp";

const [mode, modelPath, ids, count] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never", logLevel: "error"});
const model = await llama.loadModel({modelPath});
if (mode === "tokenize") {
  console.log(JSON.stringify({tokens: Array.from(model.tokenize(ids))}));
  await model.dispose();
  process.exit(0);
}
const context = await model.createContext({
  contextSize: 512,
  batchSize: 512,
  flashAttention: false,
  experimentalKvCacheKeyType: "F32",
  experimentalKvCacheValueType: "F32",
});
const sequence = context.getSequence();
const tokens = ids.split(",").map(Number);
if (mode === "logits") {
  const outputs = await sequence.controlledEvaluate(tokens.map((t) => [t, {generateNext: {logits: true}}]));
  const logits = outputs.map((o) => {
    const row = [];
    for (const [token, value] of o.next.logits) row[token] = value;
    return row;
  });
  console.log(JSON.stringify({logits}));
} else {
  const generated = [];
  for await (const token of sequence.evaluate(tokens, {temperature: 0})) {
    generated.push(token);
    if (generated.length >= Number(count)) break;
  }
  console.log(JSON.stringify({tokens: generated}));
}
await context.dispose();
await model.dispose();
