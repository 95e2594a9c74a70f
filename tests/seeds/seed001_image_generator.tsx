'use client';
import {ImageOutput as ImageIO} from '/api/job/ikstream.js';
import {processStreamingResponse} from '/api/job/ikstream.js';
import {useState} from 'react';
import {Submit} from './Submit';
export function ImageGenerator() {
const [eta, setEta] = useState<number | undefined>(undefined);
const [error, setError] = useState<Error | undefined>(undefined);
const [resultImage, setResultImage] = useState<ImageIO | undefined>(
undefined
);
return (
<>
<form
action={async (formData: FormData) => {
const prompt = formData.get('prompt');
if (!prompt) {
return;
}
setError(undefined);
setResultImage(undefined);
try {
const response = await fetch(`/api/generate-image?prompt=${prompt}`);
// Process the Server-sent events
const results = await processStreamingResponse(response, progress =>
setEta(progress.eta[1] ?? undefined) // Update the ETA
);
// Get the output image
setResultImage(results.getOutput<ImageIO>(0));
} catch (error) {
setError(error as Error);
}
}}
>
<input type="text" name="prompt" placeholder="Enter a prompt..." />
<Submit eta={eta} />
</form>
{error && <p>Error: {error.message}</p>}
{resultImage && <img src={resultImage.dataUrl} alt="Generated image" />}
</>
);
}
