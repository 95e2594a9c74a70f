import {createRoot} from "react-dom/client";
import {ImageGenerator} from "../build/recipes/ImageGenerator.tsx";

createRoot(document.getElementById("root")).render(<ImageGenerator />);
