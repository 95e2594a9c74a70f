import {trpc} from './harness/trpc';
import {processJsonStream} from '/api/job/ikstream.js';
import {ImageOutput as ImageIO} from '/api/job/ikstream.js';
// Fetch the stream and process it
const stream = await trpc.stableDiffusion.query('A puppy that fly like a superhero');
const results = await processJsonStream(stream, progress => {
const [_, maxEta] = progress.eta;
if (maxEta) {
console.log(`ETA: ${Math.round(maxEta / 1000)}s`);
}
});
// Get the output image
const image = results.getOutput<ImageIO>(0);
console.log('Image:', image.dataUrl);
