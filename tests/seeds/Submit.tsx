'use client';
import {useFormStatus} from 'react-dom';
export function Submit(props: {eta?: number}) {
const {eta} = props;
const {pending} = useFormStatus();
return (
<div>
<button type="submit" disabled={pending}>
{pending ? (
<>
Generating...
{eta != null && ` (ETA: ${Math.round(eta / 1000)}s)`}
</>
) : (
'Generate'
)}
</button>
</div>
);
}
