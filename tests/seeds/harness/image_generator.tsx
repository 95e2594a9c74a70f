import {createRoot} from 'react-dom/client';
import {ImageGenerator} from '../seed001_image_generator';

createRoot(document.getElementById('root')!).render(<ImageGenerator />);
(window as any).harnessReady = true;
